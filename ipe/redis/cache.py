"""Cache-channel events in Redis, shared by every node (see `ipe.cache`)."""

from __future__ import annotations

import json
from typing import Any

from ipe.cache import CachedEvent, InMemoryCache
from ipe.redis import keys


class RedisCache:
    """Cache-channel events in Redis, shared by every node; this process's copy when Redis
    cannot answer (a cache miss is the worst outcome of an outage)."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.local = InMemoryCache()

    def _key(self, app_id: str, channel: str) -> str:
        # The app's hash tag: on a Redis Cluster this lives on the shard of the app's state.
        return keys.cache(self.link.prefix, app_id, channel)

    def put(self, app_id: str, channel: str, event: str, data: str, ttl: int) -> None:
        self.local.put(app_id, channel, event, data, ttl)
        value = json.dumps([event, data], separators=(",", ":"))
        key = self._key(app_id, channel)
        self.link.either(lambda client: client.set(key, value, ex=ttl), _nothing)

    def get(self, app_id: str, channel: str) -> CachedEvent | None:
        key = self._key(app_id, channel)

        def remote(client: Any) -> CachedEvent | None:
            pipe = client.pipeline(transaction=False)
            pipe.get(key)
            pipe.ttl(key)
            raw, ttl = pipe.execute()
            if raw is None:
                return None
            event, data = json.loads(raw)
            return CachedEvent(event, data, max(1, int(ttl)))

        return self.link.either(remote, lambda: self.local.get(app_id, channel))


def _nothing() -> None:
    pass
