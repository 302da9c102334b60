"""Fan-out through Redis Pub/Sub: `RedisBroker` carries every publish to every node, this one
included, so that one path gives one order. It is the only module that uses Redis Pub/Sub.

The message on the wire (docs/design-decisions.md) is a one-line JSON header, a newline, and
the client payload exactly as encoded once by the publisher:
`{"k":"e","c":"presence-room","x":"123.456","n":"node-id"}\\n{"event":...}`. A listener parses
only the header; the payload bytes go into the WebSocket frame untouched.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import gevent

from ipe.hub import Hub
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS, reconnect_backoff

if TYPE_CHECKING:
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

# Messages waiting for Redis: beyond this, new ones reach this node's clients only (counted).
PUBLISH_QUEUE = 10000
PUBLISH_BATCH = 512  # messages per pipeline
STOP_FLUSH = 2.0  # seconds a stopping node gives its waiting messages to reach Redis


class RedisBroker:
    """Pub/Sub through Redis: one PUBLISH per message, one listener per process (per shard)."""

    def __init__(
        self, hub: Hub, link: RedisLink, app_ids: tuple[str, ...], metrics: Metrics
    ) -> None:
        self.hub = hub
        self.link = link
        self.node = link.node
        self.metrics = metrics
        self.errors = REDIS_ERRORS
        self.channels = {app_id: keys.pubsub_channel(link.prefix, app_id) for app_id in app_ids}
        self._apps = {name.encode(): app_id for app_id, name in self.channels.items()}
        self._groups: list[_Listener] = []
        self._listening = False  # listeners made (none while no app is served)
        self._sharded = False
        self._failures_logged = 0.0
        self._failures_unlogged = 0
        self._outbox: deque[tuple[str, bytes, Any]] = deque()
        self._publisher: gevent.Greenlet | None = None
        # Plain-int tallies for metrics, folded in by `State.export_metrics`.
        self.received = 0
        self.dropped = 0

    # --- sending ------------------------------------------------------------------------------

    def publish(
        self,
        app_id: str,
        kind: str,
        target: str,
        payload: bytes = b"",
        exclude: str | None = None,
        here: bool = True,
        *,
        version: int | None = None,
    ) -> None:
        live = self.ready()
        header: dict[str, Any] = {"k": kind, "c": target, "n": self.node}
        if exclude:
            header["x"] = exclude
        if version is not None:
            header["v"] = version
        if here and not live:
            # No subscription to hear our own message back: serve local clients directly,
            # and tell our listener to skip the message should it be subscribed meanwhile.
            self.hub.dispatch(app_id, kind, target, payload, exclude, version)
            here = False
        if not here:
            header["l"] = 1
        if not self.link.up:
            self._failed(app_id, "Redis is unreachable")
            return
        local = (kind, target, payload, exclude, version) if here else None
        if len(self._outbox) >= PUBLISH_QUEUE:
            if local is not None:
                self.hub.dispatch(app_id, *local)
            self._failed(app_id, "too many messages waiting for Redis")
            return
        message = json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload
        self._outbox.append((app_id, message, local))
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_waiting)

    def _publish_waiting(self) -> None:
        """PUBLISH what waits, in order; what accumulated meanwhile goes in one pipeline.

        The caller of `publish` never waits for Redis, and one connection carries the lot:
        hundreds of greenlets each holding a pooled connection for one PUBLISH would exhaust
        the pool under load. A batch Redis did not take is delivered here and counted.
        """
        outbox = self._outbox
        try:
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), PUBLISH_BATCH))]
                try:
                    self._send(batch)
                except self.errors as exc:
                    self.link.mark_down(exc)
                    for app_id, _message, local in batch:
                        if local is not None:
                            self.hub.dispatch(app_id, *local)
                        self._failed(app_id, str(exc))
        finally:
            self._publisher = None

    def _send(self, batch: list[tuple[str, bytes, Any]]) -> None:
        client = self.link.client
        sharded = self.link.sharded()  # known whenever Redis is up (the probe asks)
        if len(batch) == 1 or self.link.config.cluster:
            # A cluster routes each message itself (PUBLISH to any node, SPUBLISH to its shard).
            for app_id, message, _local in batch:
                if sharded:
                    client.spublish(self.channels[app_id], message)
                else:
                    client.publish(self.channels[app_id], message)
            return
        pipe = client.pipeline(transaction=False)
        for app_id, message, _local in batch:
            pipe.publish(self.channels[app_id], message)
        pipe.execute()

    def _failed(self, app_id: str, reason: str) -> None:
        """Count a message that could not cross to other nodes; log it, at most once a second."""
        self.metrics.broker_failures.inc()
        self._failures_unlogged += 1
        now = time.monotonic()
        if now - self._failures_logged >= 1.0:
            log.warning(
                "%d message(s) of app %s delivered on this node only: %s",
                self._failures_unlogged,
                app_id,
                reason,
            )
            self._failures_logged = now
            self._failures_unlogged = 0

    # --- receiving ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener greenlet(s): one, or one per shard with sharded Pub/Sub."""
        if self._groups:
            return
        gevent.spawn(self._start_listeners)

    def _start_listeners(self) -> None:
        if self.link.config.cluster and self.link.config.sharded_pubsub != "false":
            # Sharded Pub/Sub needs to know the servers; wait for Redis like everyone else.
            backoff = reconnect_backoff()
            while True:
                try:
                    self._sharded = self.link.sharded()
                    break
                except self.errors as exc:
                    self.link.mark_down(exc)
                    gevent.sleep(backoff.next())
        # No yield from here on: watch_apps sees either no listeners or all of these.
        self._listening = True
        self._listen(sorted(self.channels.values()))

    def _listen(self, names: list[str]) -> None:
        if not names:
            return
        if self._sharded:
            # SSUBSCRIBE takes channels of one slot at a time; each listener finds its shard.
            groups = [_Listener(self, [name]) for name in names]
        else:
            groups = [_Listener(self, names)]
        self._groups.extend(groups)
        for group in groups:
            group.start()

    def watch_apps(self, app_ids: tuple[str, ...]) -> None:
        """Also listen to these apps' channels (apps added by a reload).

        Channels are only ever added: a listener restarted for the new set would miss
        messages meanwhile, and a removed app's messages find no socket here anyway.
        """
        added = {
            app_id: keys.pubsub_channel(self.link.prefix, app_id)
            for app_id in app_ids
            if app_id not in self.channels
        }
        if not added:
            return
        self.channels.update(added)
        self._apps.update({name.encode(): app_id for app_id, name in added.items()})
        if self._listening:  # new listeners for the new channels only
            self._listen(sorted(added.values()))

    def stop(self) -> None:
        """Publish what still waits (briefly), then close the Pub/Sub connections."""
        if self._publisher is not None:
            self._publisher.join(timeout=STOP_FLUSH)
        for group in self._groups:
            group.stop()

    def ready(self) -> bool:
        """True while Redis answers and every listener is subscribed."""
        return self.link.up and self._listening and all(g.live for g in self._groups)

    def take_tallies(self) -> tuple[int, int]:
        """(Pub/Sub messages received, dropped) since the last call, for ipe.metrics."""
        tallies = (self.received, self.dropped)
        self.received = self.dropped = 0
        return tallies

    def receive(self, channel: bytes, data: bytes) -> None:
        """Carry out one message from Redis: parse the header, hand the payload to the hub."""
        self.received += 1
        app_id = self._apps.get(channel)
        newline = data.find(b"\n")
        try:
            header = json.loads(data[:newline]) if app_id is not None and newline > 0 else None
            kind, target = header["k"], header["c"]  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            self.dropped += 1
            log.warning("ignoring a malformed message on %r", channel[:100])
            return
        if header.get("l") and header.get("n") == self.node:
            return  # its publisher, this node, served it already
        try:
            self.hub.dispatch(
                app_id, kind, target, data[newline + 1 :], header.get("x"), header.get("v")
            )
        except Exception:  # one bad message must not cost the subscription
            self.dropped += 1
            log.exception("error delivering a message of app %s", app_id)


class _Listener:
    """One Pub/Sub connection and the greenlet reading it; reconnects until stopped."""

    def __init__(self, broker: RedisBroker, channels: list[str]) -> None:
        self.broker = broker
        self.channels = channels
        self.live = False
        self._stopped = False
        self._pubsub: Any = None
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        # Never kill a greenlet blocked in redis-py (gevent/gevent#1929): close its connection
        # and let the loop see `_stopped`.
        self._stopped = True
        self.live = False
        self._close()

    def _close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail in many ways
                pass

    def _client(self) -> Any:
        """A plain client for the server this listener subscribes on."""
        import redis

        link = self.broker.link
        config = link.config
        # Our own keep-alive below replaces redis-py's, whose PONGs are invisible to us.
        kwargs = {**link.kwargs, "health_check_interval": 0}
        if not config.cluster:
            return redis.Redis(host=config.host, port=config.port, db=config.db, **kwargs)
        cluster = link.client
        if self.broker._sharded:
            node = cluster.get_node_from_key(self.channels[0])
        else:
            node = cluster.get_random_node()  # PUBLISH reaches every node of a cluster
        return redis.Redis(host=node.host, port=node.port, **kwargs)

    def _run(self) -> None:
        broker = self.broker
        link = broker.link
        interval = link.config.health_check_interval
        backoff = reconnect_backoff()
        failed = False
        while not self._stopped:
            try:
                self._pubsub = pubsub = self._client().pubsub()
                if broker._sharded:
                    pubsub.ssubscribe(*self.channels)
                else:
                    pubsub.subscribe(*self.channels)
                pending = len(self.channels)
                heard = time.monotonic()
                pinged = 0.0
                while not self._stopped:
                    message = pubsub.get_message(timeout=min(1.0, interval))
                    now = time.monotonic()
                    if message is None:
                        # A half-open TCP connection delivers nothing and reports nothing:
                        # PING after `interval` of silence and give up without an answer.
                        if pinged and now - pinged > link.config.timeout:
                            raise ConnectionError("no answer to PING on the Pub/Sub connection")
                        if not pinged and now - heard > interval:
                            pubsub.ping()
                            pinged = now
                        continue
                    heard = now
                    pinged = 0.0
                    kind = message["type"]
                    if kind == "message" or kind == "smessage":
                        broker.receive(message["channel"], message["data"])
                    elif kind == "subscribe" or kind == "ssubscribe":
                        pending -= 1
                        if pending <= 0 and not self.live:
                            self.live = True
                            backoff.reset()
                            if failed:
                                broker.metrics.redis_reconnects.inc()
                                log.info("resubscribed to %s", ", ".join(self.channels))
                    elif kind == "unsubscribe" or kind == "sunsubscribe":
                        # The server dropped us (a slot moved to another shard): start over.
                        raise ConnectionError(f"unsubscribed from {message['channel']!r}")
            except broker.errors as exc:
                if self._stopped:
                    break
                self.live = False
                failed = True
                link.mark_down(exc)
                delay = backoff.next()
                log.warning(
                    "Redis listener lost its connection (%s); retrying in %.1fs", exc, delay
                )
            except Exception:  # never exit silently: log, back off, subscribe again
                if self._stopped:
                    break
                self.live = False
                failed = True
                delay = backoff.next()
                log.exception("Redis listener failed; retrying in %.1fs", delay)
            finally:
                self._close()
            if self._stopped:
                break
            gevent.sleep(delay)
        self.live = False
