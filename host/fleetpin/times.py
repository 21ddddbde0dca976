"""Times as users write them and read them, the same in every command.

In: ISO 8601 (a date, taken as midnight UTC, or a date-time with a zone: 2026-05-01T12:00:00Z)
or @SECONDS (POSIX seconds, as `date +@%s` prints them). --now also takes "unknown" where a
device's clock may be unset. Out: ISO 8601 in UTC, to the second (2026-05-01T12:00:00Z).
"""

from __future__ import annotations

import datetime as dt

from fleetpin.errors import UsageError

FORMATS = "ISO 8601 (2026-05-01, 2026-05-01T12:00:00Z) or @SECONDS (@1777636800)"
_MAX = 253402300799  # 9999-12-31T23:59:59Z: the largest time a bundle can carry


def parse_time(text: str, option: str) -> int:
    """POSIX seconds of an ISO 8601 time or @SECONDS; UsageError naming `option` otherwise."""
    value = text.strip()
    if value.startswith("@"):
        digits = value[1:]
        if not digits.isdigit() or int(digits) > _MAX:
            raise UsageError(f"{option}: not @SECONDS: {text!r}", hint=f"use {FORMATS}")
        return int(digits)
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        hint = f"use {FORMATS}"
        if value.isdigit():
            hint = f"for POSIX seconds write @{value}"
        raise UsageError(f"{option}: not an ISO 8601 time: {text!r}", hint=hint) from None
    if when.tzinfo is None:
        if len(value) > 10:  # a datetime, not a bare date: refuse to guess the zone
            raise UsageError(f"{option}: no time zone in {text!r}", hint="append Z for UTC, e.g. 2026-05-01T12:00:00Z")
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def parse_now(text: str | None, option: str = "--now") -> int | None:
    """POSIX seconds of --now; None for 'unknown'; this machine's clock if not given."""
    if text is None:
        return now()
    if text.strip().lower() == "unknown":
        return None
    return parse_time(text, option)


def now() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp())


def iso8601(seconds: float | None) -> str | None:
    """2026-05-01T12:00:00Z for POSIX seconds (None stays None: an unknown time)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
