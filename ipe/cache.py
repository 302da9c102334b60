"""The last event of each cache channel, kept for a TTL and replayed to new subscribers."""

from __future__ import annotations

import time
from typing import NamedTuple, Protocol


class CachedEvent(NamedTuple):
    """A cached event: its name and data string as published, and seconds left to live."""

    event: str
    data: str
    ttl: int


class Cache(Protocol):
    """The interface every cache store implements."""

    def put(self, app_id: str, channel: str, event: str, data: str, ttl: int) -> None:
        """Remember the last event of a cache channel for `ttl` seconds."""
        ...

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        """The cached event of a channel, or None when there is none or it expired."""
        ...


class InMemoryCache:
    """The single-process cache: a dict with expiry times."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], tuple[str, str, float]] = {}

    def put(self, app_id: str, channel: str, event: str, data: str, ttl: int) -> None:
        now = time.monotonic()
        if len(self._events) > 1000 and not len(self._events) % 1000:
            self._expire(now)
        self._events[(app_id, channel)] = (event, data, now + ttl)

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        entry = self._events.get((app_id, channel))
        if entry is None:
            return None
        left = entry[2] - time.monotonic()
        if left <= 0:
            del self._events[(app_id, channel)]
            return None
        return CachedEvent(entry[0], entry[1], max(1, round(left)))

    def _expire(self, now: float) -> None:
        for key, entry in list(self._events.items()):
            if entry[2] <= now:
                del self._events[key]
