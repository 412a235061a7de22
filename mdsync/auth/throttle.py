"""In-memory sliding-window counters for login, registration and refresh throttling.

Per process, which is the deployment unit (one `mdsync serve`); a restart forgets them.
"""

from __future__ import annotations

from collections import deque

from mdsync import clock


class Window:
    """At most `limit` events per key within `seconds`."""

    def __init__(self, limit: int, seconds: float, max_keys: int = 100_000):
        self.limit, self.seconds, self.max_keys = limit, seconds, max_keys
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._sweep()
            events = self._events[key] = deque()
        horizon = clock.timestamp() - self.seconds
        while events and events[0] <= horizon:
            events.popleft()
        return events

    def retry_after(self, key: str) -> float | None:
        """Seconds until one more event is allowed, or None if it is allowed now."""
        events = self._recent(key)
        if len(events) < self.limit:
            return None
        return events[0] + self.seconds - clock.timestamp()

    def hit(self, key: str) -> None:
        self._recent(key).append(clock.timestamp())

    def take(self, key: str) -> float | None:
        """Count one event if allowed; else the seconds to wait (the event is not counted)."""
        wait = self.retry_after(key)
        if wait is None:
            self.hit(key)
        return wait

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    def _sweep(self) -> None:
        horizon = clock.timestamp() - self.seconds
        for key in [k for k, v in self._events.items() if not v or v[-1] <= horizon]:
            del self._events[key]
        if len(self._events) >= self.max_keys:  # still full: forget the oldest half
            for key in list(self._events)[: self.max_keys // 2]:
                del self._events[key]
