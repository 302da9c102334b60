"""Per-app quotas counted across every node in Redis: the `Quotas` of a cluster.

Keys (`ipe.redis.keys`, in the app's hash tag beside its presence keys):

  {P:A}:conns                  hash    node -> that node's open connections of the app
  {P:A}:rate:<limit>:<second>  string  amount used in that second (expires after 2 s)

Connections are counted per node, so that a dead node's share is removed by the janitor
(`reap`, with its presence share) and written back from memory after Redis lost it
(`restore`). A node that counts connections is in `{P:A}:nodes`, where janitors look.
A rate window is one key per app, limit and second of Redis's clock (one clock for every
node); its TTL bounds the keys to two per app and limit.

When Redis cannot be asked, the process's own counts decide, as without Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipe.quotas import Quotas
from ipe.redis import keys
from ipe.redis.scripts import Script

if TYPE_CHECKING:
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink

# -> 1 counted, 0 the app is at `maximum` (nothing counted)
ACQUIRE = Script(
    "connection_acquire",
    r"""
local total = 0
for _, n in ipairs(redis.call('HVALS', ARGV[1])) do total = total + tonumber(n) end
if total >= tonumber(ARGV[3]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HINCRBY', ARGV[1], ARGV[2], 1)
return 1
""",
    keys=("nodes",),
    args=("conns_key", "node", "maximum"),
)

# -> the node's count after
RELEASE = Script(
    "connection_release",
    r"""
local n = redis.call('HINCRBY', ARGV[1], ARGV[2], -1)
if n <= 0 then redis.call('HDEL', ARGV[1], ARGV[2]) end
return n
""",
    keys=("nodes",),
    args=("conns_key", "node"),
)

# -> 1 used, 0 `amount` would take this second's window over `maximum` (nothing used)
TAKE = Script(
    "rate_take",
    r"""
local key = ARGV[1] .. ':' .. redis.call('TIME')[1]
local used = tonumber(redis.call('GET', key) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('INCRBY', key, ARGV[2])
redis.call('EXPIRE', key, 2)
return 1
""",
    keys=("route",),
    args=("window_prefix", "amount", "maximum"),
)


class RedisQuotas(Quotas):
    """Quotas for many nodes; this process's own counts stand in while Redis is away."""

    def __init__(self, link: RedisLink, metrics: Metrics) -> None:
        super().__init__(metrics)
        self.link = link
        self.node = link.node

    def _k(self, app_id: str) -> str:
        return keys.app_tag(self.link.prefix, app_id)

    def acquire_connection(self, app_id: str, maximum: int) -> bool:
        k = self._k(app_id)

        def remote(client: Any) -> bool:
            ok = ACQUIRE(
                client,
                nodes=keys.nodes(k),
                conns_key=keys.connections(k),
                node=self.node,
                maximum=maximum,
            )
            if ok:
                self._count(app_id, 1)  # this node's share, for a restore
            return bool(ok)

        return self.link.either(remote, lambda: Quotas.acquire_connection(self, app_id, maximum))

    def release_connection(self, app_id: str) -> None:
        super().release_connection(app_id)
        k = self._k(app_id)

        def remote(client: Any) -> None:
            RELEASE(client, nodes=keys.nodes(k), conns_key=keys.connections(k), node=self.node)

        self.link.either(remote, lambda: None)  # a restore writes the count back later

    def take(self, app_id: str, limit: str, amount: int, maximum: int) -> bool:
        prefix = keys.rate(self._k(app_id), limit)

        def remote(client: Any) -> bool:
            used = TAKE(client, route=prefix, window_prefix=prefix, amount=amount, maximum=maximum)
            return bool(used)

        return self.link.either(remote, lambda: Quotas.take(self, app_id, limit, amount, maximum))

    # --- whole shares (ipe.redis.janitor; Redis errors propagate) -----------------------------

    def restore(self, app_id: str) -> None:
        """Write this node's connection count of an app back (Redis lost or reaped it)."""
        k = self._k(app_id)
        count = self.local_connections(app_id)
        client = self.link.client
        if count:
            client.sadd(keys.nodes(k), self.node)
            client.hset(keys.connections(k), self.node, count)
        else:
            client.hdel(keys.connections(k), self.node)

    def reap(self, app_id: str, node: str) -> None:
        """Remove a dead node's connections of an app from the cluster's count."""
        self.link.client.hdel(keys.connections(self._k(app_id)), node)
