"""The last event of each cache channel, kept for a TTL and replayed to new subscribers."""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple, Protocol


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


class RedisCache:
    """Cache-channel events in Redis, shared by every node; this process's copy when Redis
    cannot answer (a cache miss is the worst outcome of an outage)."""

    def __init__(self, link: Any) -> None:
        from ipe.redisconn import REDIS_ERRORS  # redis is imported only when Redis is used

        self.link = link
        self.errors = REDIS_ERRORS
        self.local = InMemoryCache()

    def _key(self, app_id: str, channel: str) -> str:
        # The app's hash tag: on a Redis Cluster this lives on the shard of the app's state.
        return f"{{{self.link.prefix}:{app_id}}}:cache:{channel}"

    def put(self, app_id: str, channel: str, event: str, data: str, ttl: int) -> None:
        self.local.put(app_id, channel, event, data, ttl)
        if not self.link.up:
            return
        try:
            self.link.client.set(
                self._key(app_id, channel), json.dumps([event, data], separators=(",", ":")), ex=ttl
            )
        except self.errors as exc:
            self.link.mark_down(exc)

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        if self.link.up:
            key = self._key(app_id, channel)
            try:
                pipe = self.link.client.pipeline(transaction=False)
                pipe.get(key)
                pipe.ttl(key)
                raw, ttl = pipe.execute()
                if raw is None:
                    return None
                event, data = json.loads(raw)
                return CachedEvent(event, data, max(1, int(ttl)))
            except self.errors as exc:
                self.link.mark_down(exc)
        return self.local.get(app_id, channel)
