"""The console across a cluster: one Redis Pub/Sub channel carries leases, node numbers and
the records of watched apps.

A node with a console stream of an app publishes a *lease* for it every `LEASE_EVERY`
seconds; every node that hears it adds the app to its tap until the lease runs out, and from
then publishes that app's records (in order: one publisher greenlet, one connection). A
node with an overview open leases `OVERVIEW` instead, and every node answers with its numbers.
Nobody watching: no lease, no records, nothing published.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent

from ipe.backoff import Backoff
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS

if TYPE_CHECKING:
    from ipe.console.service import Console
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

LEASE_EVERY = 2.0  # seconds between two leases of a watched app
LEASE_TTL = 7.0  # a lease not renewed for this long ends
OVERVIEW = "*overview*"  # the lease asking every node for its numbers
OUTBOX = 10000  # records waiting for Redis; beyond, new ones are dropped (counted)
BATCH = 256  # messages per pipeline
MAX_APPS_SCANNED = 1000  # apps whose node shares the overview reads
MAX_NODES = 1000  # nodes the overview lists
DELIVERIES_KEPT = 50  # webhook deliveries kept per target in Redis...
DELIVERIES_TTL = 7 * 86400  # ...for a week after the last one


class Relay:
    """Console traffic through Redis: leases out, records and numbers in."""

    def __init__(self, link: RedisLink, console: Console) -> None:
        self.link = link
        self.console = console
        self.tap = console.tap
        self.channel = keys.console_channel(link.prefix)
        # (list key or None for the channel, message): one greenlet sends them in order.
        self._outbox: deque[tuple[str | None, bytes]] = deque()
        self._publisher: gevent.Greenlet | None = None
        self._listener: gevent.Greenlet | None = None
        self._pubsub: Any = None
        self._overview_until = 0.0
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self.dropped = 0

    def start(self) -> None:
        """Start listening (once per process)."""
        if self._listener is None:
            self._listener = gevent.spawn(self._listen_forever)

    # --- out ----------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if len(self._outbox) >= OUTBOX or not self.link.up:
            self.dropped += 1
            return
        self._queue(None, json.dumps(message, separators=(",", ":")).encode())

    def _queue(self, key: str | None, message: bytes) -> None:
        self._outbox.append((key, message))
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_waiting)

    def _publish_waiting(self) -> None:
        outbox = self._outbox
        try:
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), BATCH))]
                try:
                    client = self.link.client
                    if self.link.config.cluster:  # each command routed to its own shard
                        for key, message in batch:
                            self._write(client, key, message)
                    else:
                        pipe = client.pipeline(transaction=False)
                        for key, message in batch:
                            self._write(pipe, key, message)
                        pipe.execute()
                except REDIS_ERRORS as exc:
                    self.dropped += len(batch)
                    self.link.mark_down(exc)
        finally:
            self._publisher = None

    def _write(self, client: Any, key: str | None, message: bytes) -> None:
        if key is None:
            client.publish(self.channel, message)
            return
        client.lpush(key, message)
        client.ltrim(key, 0, DELIVERIES_KEPT - 1)
        client.expire(key, DELIVERIES_TTL)

    def _deliveries_key(self, lane: str) -> str:
        return keys.console_deliveries(self.link.prefix, lane.rsplit("/", 1)[0], lane)

    def save_delivery(self, lane: str, delivery: dict[str, Any]) -> None:
        """The tap's `on_delivery`: keep the lane's last deliveries in Redis for every node."""
        if len(self._outbox) >= OUTBOX or not self.link.up:
            self.dropped += 1
            return
        message = json.dumps(delivery, separators=(",", ":")).encode()
        self._queue(self._deliveries_key(lane), message)

    def publish(self, app_id: str, record: dict[str, Any]) -> None:
        """The tap's sink: one record of a watched app, to every node's watchers."""
        record["a"] = app_id
        self._send(record)

    def watched_here(self, app_id: str, watched: bool) -> None:
        """The watchers' callback: lease at once, so records start flowing now."""
        if watched:
            self.tap.apps[app_id] = time.monotonic() + LEASE_TTL
            self._send({"lease": app_id})

    def overview_wanted(self) -> None:
        """An overview is open here: ask every node for its numbers for a while."""
        now = time.monotonic()
        if now > self._overview_until - LEASE_TTL + LEASE_EVERY:
            self._send({"lease": OVERVIEW})
        self._overview_until = now + LEASE_TTL

    def tick(self) -> None:
        """Every few seconds: renew our leases, drop expired ones, answer an overview lease."""
        now = time.monotonic()
        for app_id in tuple(self.console.watchers.streams):
            self._send({"lease": app_id})
        if now < self._overview_until:
            self._send({"lease": OVERVIEW})
        for app_id, until in tuple(self.tap.apps.items()):
            if until < now:
                self.tap.apps.pop(app_id, None)
        if OVERVIEW in self.tap.apps:
            self._send({"stats": self.console.node_stats()})

    # --- in -----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """One message from the channel."""
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        app_id = message.pop("a", None)
        if isinstance(app_id, str):
            self.console.watchers.deliver(app_id, message)
        elif isinstance(message.get("lease"), str):
            self.tap.apps[message["lease"]] = time.monotonic() + LEASE_TTL
        elif isinstance(message.get("stats"), dict):
            stats = message["stats"]
            if isinstance(stats.get("node"), str):
                self._nodes[stats["node"]] = (time.monotonic(), stats)

    def nodes(self, here: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live node (heartbeats in Redis) with its latest numbers, this one first."""
        now = time.monotonic()
        for node, (seen, _stats) in tuple(self._nodes.items()):
            if now - seen > LEASE_TTL:
                del self._nodes[node]
        alive = self._heartbeats()
        result = [here]
        names = set(self._nodes) | (alive or set())
        names.discard(here["node"])
        for node in sorted(names):
            if node in self._nodes:
                result.append(self._nodes[node][1])
            else:
                result.append({"node": node, "waiting": True})
        return result

    def _heartbeats(self) -> set[str] | None:
        """Nodes that hold a share of an app and whose janitor heartbeat is in Redis (as the
        janitors judge them); None if Redis cannot say. Nodes with no client yet are known
        only by their answer to the overview lease."""
        try:
            presence = self.console.state.presence
            names: set[str] = set()
            for app in self.console.state.apps.all[:MAX_APPS_SCANNED]:
                names |= presence.nodes(app.app_id)
            names = set(sorted(names)[:MAX_NODES])
            pipe = self.link.client.pipeline(transaction=False)
            ordered = sorted(names)
            for node in ordered:
                pipe.exists(keys.heartbeat(self.link.prefix, node))
            alive = pipe.execute() if ordered else []
            return {node for node, up in zip(ordered, alive, strict=True) if up}
        except REDIS_ERRORS:
            return None

    def deliveries(self, app_id: str, lanes: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The last webhook deliveries of each lane, by every node (this one's if Redis is away)."""
        result = {}
        try:
            for lane in lanes:
                items = self.link.client.lrange(self._deliveries_key(lane), 0, DELIVERIES_KEPT - 1)
                result[lane] = [json.loads(item) for item in items]
            return result
        except REDIS_ERRORS:
            kept = self.tap.deliveries or {}
            return {lane: list(kept.get(lane, ())) for lane in lanes}

    def _client(self) -> Any:
        import redis

        config = self.link.config
        kwargs = {**self.link.kwargs, "health_check_interval": 0}
        if not config.cluster:
            return redis.Redis(host=config.host, port=config.port, db=config.db, **kwargs)
        node = self.link.client.get_random_node()  # PUBLISH reaches every node of a cluster
        return redis.Redis(host=node.host, port=node.port, **kwargs)

    def _listen_forever(self) -> None:
        backoff = Backoff(0.5, 5.0)
        interval = self.link.config.health_check_interval
        while True:
            pubsub = None
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                heard = time.monotonic()
                pinged = 0.0
                backoff.reset()
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    now = time.monotonic()
                    if message is None:
                        if pinged and now - pinged > self.link.config.timeout:
                            raise ConnectionError("no answer to PING on the console channel")
                        if not pinged and now - heard > interval:
                            pubsub.ping()
                            pinged = now
                        continue
                    heard, pinged = now, 0.0
                    if message["type"] == "message":
                        self.receive(message["data"])
            except REDIS_ERRORS as exc:
                log.info("console channel lost (%s); subscribing again", exc)
            except Exception:
                log.exception("console listener failed; subscribing again")
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass
            gevent.sleep(backoff.next())
