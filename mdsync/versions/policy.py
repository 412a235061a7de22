"""Which automatic versions thinning keeps — a pure function of the versions and "now".

The policy (docs/architecture.md "Versions"), for the automatic versions of one document:
- every version younger than 24 hours is kept;
- from 24 hours to 7 days old, one per UTC calendar hour: the newest of that hour;
- older than 7 days, one per UTC calendar day: the newest of that day.
"The newest of that hour/day" counts every automatic version in the bucket, younger ones too.
Named, restore and import versions are never given to this function: they are always kept.

Buckets are fixed calendar hours and days (not windows sliding with "now"), so the policy is
monotone: a version it keeps today is one it also kept yesterday (the newest of a day is the
newest of its hour), and pruning twice removes nothing more than pruning once.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from mdsync import clock

KEEP_ALL = timedelta(hours=24)
HOURLY_UNTIL = timedelta(days=7)


def keep(versions: Iterable[tuple[str, str]], now: datetime) -> set[str]:
    """The ids to keep among `versions`: (id, created_at) pairs of ONE document's automatic
    versions, created_at as stored (RFC 3339 UTC, `clock.iso`, sortable as text)."""
    all_after = clock.iso(now - KEEP_ALL)
    hourly_after = clock.iso(now - HOURLY_UNTIL)
    kept: set[str] = set()
    newest_of_hour: dict[str, tuple[str, str]] = {}
    newest_of_day: dict[str, tuple[str, str]] = {}
    tier: dict[str, str] = {}
    for version_id, created_at in versions:
        key = (created_at, version_id)
        hour, day = created_at[:13], created_at[:10]   # "2026-11-29T16" / "2026-11-29"
        if newest_of_hour.get(hour, ("", "")) < key:
            newest_of_hour[hour] = key
        if newest_of_day.get(day, ("", "")) < key:
            newest_of_day[day] = key
        if created_at >= all_after:
            kept.add(version_id)
        else:
            tier[version_id] = "hour" if created_at >= hourly_after else "day"
    for _created_at, version_id in newest_of_hour.values():
        if tier.get(version_id) == "hour":
            kept.add(version_id)
    for _created_at, version_id in newest_of_day.values():
        if tier.get(version_id) == "day":
            kept.add(version_id)
    return kept


def thin(versions: list[tuple[str, str]], now: datetime) -> list[str]:
    """The ids thinning removes (the complement of `keep`), in the order given."""
    kept = keep(versions, now)
    return [version_id for version_id, _ in versions if version_id not in kept]
