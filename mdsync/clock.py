"""The one clock. Everything that needs "now" asks here, so tests can move time."""

from __future__ import annotations

import time
from datetime import UTC, datetime

_offset_seconds = 0.0


def now() -> datetime:
    """The current time, timezone-aware UTC (shifted by `advance` in tests)."""
    return datetime.fromtimestamp(time.time() + _offset_seconds, UTC)


def timestamp() -> float:
    """Unix time in seconds, on the same clock as `now()`."""
    return time.time() + _offset_seconds


def advance(seconds: float) -> None:
    """Move the clock forward (tests only: expire tokens, windows, invitations)."""
    global _offset_seconds
    _offset_seconds += seconds


def reset() -> None:
    global _offset_seconds
    _offset_seconds = 0.0


def iso(moment: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds: sortable as text, as stored in the database."""
    moment = moment or now()
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_in(seconds: float) -> str:
    return iso(datetime.fromtimestamp(timestamp() + seconds, UTC))


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
