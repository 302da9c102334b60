"""Per-app quotas counted across every node in Redis: the `Quotas` of a cluster.

Layout (in the app's hash tag, beside ipe.redis.presence's keys):

  {P:A}:conns                  hash    node -> that node's open connections of the app
  {P:A}:rate:<limit>:<second>  string  amount used in that second (expires after 2 s)

Connections are counted per node, so that a dead node's share is removed by the janitor
(`reap`, at the same time as its presence share) and written back from memory after Redis
lost it (`restore`). A node that counts connections is in `{P:A}:nodes`, where janitors look.
A rate window is one key per app, limit and second of Redis's clock (one clock for every
node); its TTL bounds the keys to two per app and limit.

When Redis cannot be asked, the process's own counts decide, as without Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipe.quotas import Quotas
from ipe.redis.link import REDIS_ERRORS

if TYPE_CHECKING:
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink

# KEYS[1] nodes; ARGV: conns key, node, maximum. -> 1 counted, 0 at the maximum
_ACQUIRE = r"""
local total = 0
for _, n in ipairs(redis.call('HVALS', ARGV[1])) do total = total + tonumber(n) end
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HINCRBY', ARGV[1], ARGV[2], 1)
return 1
"""

# ARGV: conns key, node
_RELEASE = r"""
local n = redis.call('HINCRBY', ARGV[1], ARGV[2], -1)
if n <= 0 then redis.call('HDEL', ARGV[1], ARGV[2]) end
return n
"""

# ARGV: window key prefix, amount, maximum. -> 1 used, 0 it would exceed the maximum
_TAKE = r"""
local key = ARGV[1] .. ':' .. redis.call('TIME')[1]
local used = tonumber(redis.call('GET', key) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('INCRBY', key, ARGV[2])
redis.call('EXPIRE', key, 2)
return 1
"""


class RedisQuotas(Quotas):
    """Quotas for many nodes; this process's own counts stand in while Redis is away."""

    def __init__(self, link: RedisLink, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.link = link
        self.node = link.node
        self._scripts: dict[str, Any] = {}

    def _run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.link.client.register_script(source)
        return script(keys=keys, args=args)

    def _k(self, app_id: str) -> str:
        return f"{{{self.link.prefix}:{app_id}}}"

    def acquire_connection(self, app_id: str, maximum: int) -> bool:
        if self.link.up:
            k = self._k(app_id)
            try:
                ok = self._run(_ACQUIRE, [k + ":nodes"], [k + ":conns", self.node, maximum])
            except REDIS_ERRORS as exc:
                self.link.mark_down(exc)
            else:
                if ok:
                    self._count(app_id, 1)  # this node's share, for a restore
                return bool(ok)
        return super().acquire_connection(app_id, maximum)

    def release_connection(self, app_id: str) -> None:
        super().release_connection(app_id)
        if self.link.up:
            k = self._k(app_id)
            try:
                self._run(_RELEASE, [k + ":nodes"], [k + ":conns", self.node])
            except REDIS_ERRORS as exc:
                self.link.mark_down(exc)

    def take(self, app_id: str, limit: str, amount: int, maximum: int) -> bool:
        if self.link.up:
            prefix = f"{self._k(app_id)}:rate:{limit}"
            try:
                return bool(self._run(_TAKE, [prefix], [prefix, amount, maximum]))
            except REDIS_ERRORS as exc:
                self.link.mark_down(exc)
        return super().take(app_id, limit, amount, maximum)

    # --- whole shares (ipe.redis.janitor) -----------------------------------------------------

    def restore(self, app_id: str) -> None:
        """Write this node's connection count of an app back (Redis lost or reaped it)."""
        k = self._k(app_id)
        count = self.local_connections(app_id)
        if count:
            self.link.client.sadd(k + ":nodes", self.node)
            self.link.client.hset(k + ":conns", self.node, count)
        else:
            self.link.client.hdel(k + ":conns", self.node)

    def reap(self, app_id: str, node: str) -> None:
        """Remove a dead node's connections of an app from the cluster's count."""
        self.link.client.hdel(self._k(app_id) + ":conns", node)
