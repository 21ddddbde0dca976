"""Times as users write them: --now takes ISO 8601 (a date, or a date-time with a zone) or
@SECONDS, the same in every command."""

from __future__ import annotations

import datetime as dt

from fleetpin.errors import UsageError


def parse_now(text: str | None) -> int | None:
    """POSIX seconds of --now; None for 'unknown'; this machine's clock if not given."""
    if text is None:
        return int(dt.datetime.now(dt.timezone.utc).timestamp())
    if text.strip().lower() == "unknown":
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--now: not an ISO 8601 time: {text!r}", hint="e.g. --now 2026-05-01T12:00:00Z") from None
    if when.tzinfo is None:
        if len(text.strip()) > 10:  # a datetime, not a bare date: refuse to guess the zone
            raise UsageError(f"--now: no time zone in {text!r}", hint="append Z for UTC, e.g. 2026-05-01T12:00:00Z")
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())
