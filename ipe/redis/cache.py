"""Cache-channel events in Redis, shared by every node (see `ipe.cache`)."""

from __future__ import annotations

import json
from typing import Any

from ipe.cache import CachedEvent, InMemoryCache


class RedisCache:
    """Cache-channel events in Redis, shared by every node; this process's copy when Redis
    cannot answer (a cache miss is the worst outcome of an outage)."""

    def __init__(self, link: Any) -> None:
        from ipe.redis.link import REDIS_ERRORS  # redis is imported only when Redis is used

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
