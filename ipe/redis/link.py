"""The connection to Redis that broker, presence and cache share, and whether Redis answers.

One `RedisLink` per process: it builds the redis-py client (one server, the master that Redis
Sentinel names, or a Redis Cluster; TLS or not) from `RedisConfig`, and a probe greenlet
keeps `up` true while Redis answers PING. Whoever meets a Redis error calls `mark_down()`,
so that the others stop waiting on a dead server and serve from local knowledge; the probe
retries with a capped back-off and tells the `on_up` callbacks when Redis is back (the
presence store then re-registers).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import gevent.event
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from ipe.backoff import Backoff
from ipe.config import RedisConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# Everything a Redis call may raise when the server is away, slow or reshaping its cluster.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)

BACKOFF_START = 0.5
BACKOFF_CAP = 5.0


def reconnect_backoff() -> Backoff:
    """The back-off of everything that reconnects to Redis: 0.5 s, doubling up to 5 s."""
    return Backoff(BACKOFF_START, BACKOFF_CAP)


def node_id(instance_id: str) -> str:
    """This process's id in Redis: IPE_INSTANCE_ID plus the pid (gunicorn workers differ)."""
    return f"{instance_id or uuid.uuid4().hex[:12]}.{os.getpid()}"


MAX_CONNECTIONS = 64  # per process, one server: greenlets beyond it wait their turn
CLUSTER_MAX_CONNECTIONS = 4096  # per process and cluster node


def connection_kwargs(config: RedisConfig) -> dict[str, Any]:
    """The redis-py connection options shared by every client ipe makes."""
    kwargs: dict[str, Any] = {
        "username": config.username,
        "password": config.password,
        "socket_timeout": config.timeout,
        "socket_connect_timeout": config.timeout,
        "socket_keepalive": True,
        # Pooled connections idle longer than this are PINGed before use, so a connection
        # silently dropped by a NAT or firewall is replaced instead of hanging a request.
        "health_check_interval": config.health_check_interval,
        # One immediate retry replaces a pooled connection the server closed (a restart);
        # redis-py's default (10 retries with back-off) would hold a request for many seconds
        # while ipe should serve local clients at once.
        "retry": Retry(NoBackoff(), 1),
        # Redis Enterprise's maintenance push messages: unknown to redis-server, and each
        # new connection would pay a failing round trip asking for them.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if config.tls:
        kwargs["ssl"] = True
        kwargs["ssl_cert_reqs"] = "required" if config.tls_verify else "none"
        kwargs["ssl_check_hostname"] = config.tls_verify
        if config.tls_ca_file:
            kwargs["ssl_ca_certs"] = config.tls_ca_file
    return kwargs


class RedisLink:
    """The shared Redis client of one process, with its reachability state."""

    def __init__(self, config: RedisConfig, node: str) -> None:
        self.config = config
        self.node = node
        self.prefix = config.prefix
        self.kwargs = connection_kwargs(config)
        self._client: Any = None
        self._publisher: Any = None
        self.up = False
        self._down_since = time.monotonic()
        self._callbacks: list[Callable[[], None]] = []
        self._probe: gevent.Greenlet | None = None
        self._wake = gevent.event.Event()
        self._sharded: bool | None = None
        self._sentinel: Any = None

    @property
    def client(self) -> Any:
        """The redis-py client (made on first use: a Redis Cluster client connects at once)."""
        if self._client is None:
            self._client = self._make(self.kwargs)
        return self._client

    @property
    def publisher(self) -> Any:
        """The client PUBLISH goes through: one that never re-sends a command.

        A command that timed out may still sit in the server's input buffer (a stalled or
        paused Redis reads it once it wakes up): re-sent on a new connection, it would be
        published twice, and other nodes would deliver it twice. On a Cluster it still
        follows MOVED and ASK (the command was refused, not run), never a failed connection.
        """
        if self._publisher is None:
            self._publisher = self._make({**self.kwargs, "retry": Retry(NoBackoff(), 0)})
        return self._publisher

    def _make(self, connection_kwargs: dict[str, Any]) -> Any:
        """A redis-py client of the configured kind with these connection options."""
        config = self.config
        # redis-py's pools raise "Too many connections" past 100 by default, and ipe
        # would take that for Redis being down: a burst of subscribes (every client
        # reconnecting after a deploy) runs that many scripts at once. One server: callers
        # wait for a free connection. A cluster's per-node pools cannot block; their
        # ceiling is set far above what a burst opens.
        if config.sentinel_master:
            # redis-py asks the Sentinels for the master on every new connection, and
            # drops connections to a demoted one: failovers are followed by reconnecting.
            return self.sentinel.master_for(
                config.sentinel_master, db=config.db, **connection_kwargs
            )
        if config.cluster:
            return RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in config.addrs],
                max_connections=CLUSTER_MAX_CONNECTIONS,
                **connection_kwargs,
            )
        kwargs = dict(connection_kwargs)
        if kwargs.pop("ssl", False):  # a pool picks its connection class itself
            kwargs["connection_class"] = redis.SSLConnection
        pool = redis.BlockingConnectionPool(
            host=config.host,
            port=config.port,
            db=config.db,
            max_connections=MAX_CONNECTIONS,
            timeout=config.timeout,
            **kwargs,
        )
        return redis.Redis(connection_pool=pool)

    @property
    def sentinel(self) -> Any:
        """The redis-py `Sentinel` that finds the master (with `redis.sentinel` only)."""
        if self._sentinel is None:
            from redis.sentinel import Sentinel

            config = self.config
            sentinel_kwargs: dict[str, Any] = {
                "password": config.sentinel_password,
                "socket_timeout": config.timeout,
                "socket_connect_timeout": config.timeout,
            }
            for name in ("ssl", "ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_certs"):
                if name in self.kwargs:
                    sentinel_kwargs[name] = self.kwargs[name]
            self._sentinel = Sentinel(list(config.sentinel_addrs), sentinel_kwargs=sentinel_kwargs)
        return self._sentinel

    def pubsub_client(self, **overrides: Any) -> Any:
        """A client of its own for a Pub/Sub connection to the one server (the Sentinels'
        current master, any node of a Cluster); `overrides` replace connection options."""
        config = self.config
        kwargs = {**self.kwargs, **overrides}
        if config.sentinel_master:
            return self.sentinel.master_for(config.sentinel_master, db=config.db, **kwargs)
        if config.cluster:  # unsharded Pub/Sub: PUBLISH reaches every node of a Cluster
            node = self.client.get_random_node()
            return redis.Redis(host=node.host, port=node.port, **kwargs)
        return redis.Redis(host=config.host, port=config.port, db=config.db, **kwargs)

    # --- state --------------------------------------------------------------------------------

    def on_up(self, callback: Callable[[], None]) -> None:
        """Call `callback` (in the probe greenlet) each time Redis becomes reachable."""
        self._callbacks.append(callback)

    def mark_down(self, exc: BaseException) -> None:
        """Record that a Redis call failed; the probe takes over until Redis answers."""
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            log.warning(
                "%s unreachable (%s); serving this process's clients only until it is back",
                self.config.describe(),
                exc,
            )
        self._wake.set()

    def either(self, remote: Callable[[Any], T], local: Callable[[], T]) -> T:
        """`remote(client)` while Redis is up; `local()` when it is down or the call fails
        (the link is then marked down): the one way ipe falls back to this process's state."""
        if self.up:
            try:
                return remote(self.client)
            except REDIS_ERRORS as exc:
                self.mark_down(exc)
        return local()

    def sharded(self) -> bool:
        """True when Pub/Sub should be sharded (SPUBLISH): a Redis Cluster of Redis 7+."""
        if self._sharded is None:
            setting = self.config.sharded_pubsub
            if not self.config.cluster or setting == "false":
                self._sharded = False
            elif setting == "true":
                self._sharded = True
            else:
                info = self.client.info("server", target_nodes=RedisCluster.RANDOM)
                if "redis_version" not in info:  # one answer per node
                    info = next(iter(info.values()))
                self._sharded = int(str(info["redis_version"]).split(".")[0]) >= 7
        return self._sharded

    # --- probing ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start probing (once per process, after fork)."""
        if self._probe is None:
            self._probe = gevent.spawn(self._probe_forever)

    def stop(self) -> None:
        """Stop probing and close pooled connections."""
        if self._probe is not None:
            self._probe.kill(block=False)
            self._probe = None
        for client in (self._client, self._publisher):
            if client is not None:
                try:
                    client.close()
                except REDIS_ERRORS:
                    pass

    def _probe_forever(self) -> None:
        backoff = reconnect_backoff()
        attempts = 0
        while True:
            try:
                self.client.ping()
                if self.config.cluster:
                    self.sharded()
            except REDIS_ERRORS as exc:
                self.mark_down(exc)
                attempts += 1
                delay = backoff.next()
                if attempts == 1 or attempts % 10 == 0:
                    log.warning(
                        "%s unreachable for %.0fs (%s); retrying in %.1fs",
                        self.config.describe(),
                        time.monotonic() - self._down_since,
                        exc,
                        delay,
                    )
                self._wake.clear()
                gevent.sleep(delay)
                continue
            except Exception:  # never let the probe die: /ready and recovery depend on it
                log.exception("Redis probe failed")
                gevent.sleep(BACKOFF_CAP)
                continue
            if not self.up:
                self.up = True
                attempts = 0
                backoff.reset()
                log.info(
                    "%s reachable (node %s, after %.1fs)",
                    self.config.describe(),
                    self.node,
                    time.monotonic() - self._down_since,
                )
                for callback in self._callbacks:
                    try:
                        callback()
                    except REDIS_ERRORS as exc:
                        self.mark_down(exc)
                    except Exception:
                        log.exception("error running a Redis recovery step")
                if not self.up:  # recovery failed half-way: it runs again on the next success
                    gevent.sleep(backoff.next())
                    continue
            self._wake.clear()
            self._wake.wait(self.config.health_check_interval)
