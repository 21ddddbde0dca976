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
    return parse_time(text, "--now")


def parse_time(text: str, option: str) -> int:
    """POSIX seconds of an ISO 8601 date (midnight UTC) or date-time with a zone given to `option`."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option}: not an ISO 8601 time: {text!r}", hint=f"e.g. {option} 2026-05-01T12:00:00Z") from None
    if when.tzinfo is None:
        if len(text.strip()) > 10:  # a datetime, not a bare date: refuse to guess the zone
            raise UsageError(f"{option}: no time zone in {text!r}", hint=f"append Z for UTC, e.g. {option} 2026-05-01T12:00:00Z")
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())
