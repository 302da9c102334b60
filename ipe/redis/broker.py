"""Fan-out through Redis Pub/Sub: `RedisBroker` delivers every publish to this node's
subscribers at once and carries it to the other nodes through Redis. Each publisher's messages
keep their order (one local call, one ordered outbox); this node skips its own echoes. What
follows cluster-wide state (member events, watchlist notices, subscription counts) is instead
heard back through Redis by its producer too, so that every node applies it in Redis's one
order. It is the only module that uses Redis Pub/Sub.

Routing by interest: a message goes to the Pub/Sub channel of what it is for (a channel, a
signed-in user, a watched user: `ipe.hub.topic_of`), and a node subscribes only to those its
own sockets want (`Hub.on_interest`), so a node hears nothing of channels it holds no
subscriber of. Subscription changes are batched (everything that changed while other
greenlets ran goes out in one write) and never make a client wait longer than its own
subscribe's round trips; a topic whose last socket left stays subscribed for LINGER seconds
(at most MAX_LINGERING of them), so that churn does not thrash Redis. Each app also has a
control channel every node subscribes to. On a Redis Cluster of Redis 7+ the topics are
sharded channels (SPUBLISH/SSUBSCRIBE) spread over every master: one listener per master.

The message on the wire (docs/design-decisions.md) is a one-line JSON header, a newline, and
the client payload exactly as encoded once by the publisher:
`{"n":"node-id","k":"e","c":"presence-room","x":"123.456"}\\n{"event":...}`. A listener parses
only the header, and not even that for its own node's echo (it starts with the node id);
the payload bytes go into the WebSocket frame untouched.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from redis.exceptions import ResponseError

from ipe.hub import CHANNEL, EVENT, WATCH, Hub, topic_of
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS, reconnect_backoff
from ipe.redis.listener import Listener

if TYPE_CHECKING:
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

# Messages waiting for Redis: beyond this, new ones reach this node's clients only (counted).
PUBLISH_QUEUE = 10000
PUBLISH_BATCH = 512  # messages per pipeline
STOP_FLUSH = 2.0  # seconds a stopping node gives its waiting messages to reach Redis
LINGER = 10.0  # seconds a topic stays subscribed after its last local socket left
MAX_LINGERING = 10000  # topics kept that way; beyond, the oldest is unsubscribed at once


class RedisBroker:
    """Pub/Sub through Redis: PUBLISH to a topic, listeners for the topics this node wants."""

    def __init__(
        self, hub: Hub, link: RedisLink, app_ids: tuple[str, ...], metrics: Metrics
    ) -> None:
        self.hub = hub
        self.link = link
        self.node = link.node
        # How this node's own messages begin, unless it must hear them back (see `publish`):
        # the listener drops such an echo without parsing it.
        self._echo = json.dumps({"n": self.node}, separators=(",", ":"))[:-1].encode() + b',"k"'
        self.prefix = link.prefix
        self.metrics = metrics
        self.errors = REDIS_ERRORS
        self.app_ids = app_ids
        self.sharded = False  # decided by `start` (needs Redis on a Cluster)
        self._wanted: dict[bytes, str] = {}  # topic -> app_id, lingering ones included
        self._lingering: OrderedDict[str, float] = OrderedDict()  # topic -> when it emptied
        self._listeners: dict[tuple[str, int] | None, Listener] = {}
        self._placed: dict[str, Listener] = {}  # topic -> the listener subscribing it
        self._started = False
        self._syncer: gevent.Greenlet | None = None
        self._dirty = False  # subscription changes not sent yet
        self._resharding: gevent.Greenlet | None = None
        self._failures_logged = 0.0
        self._failures_unlogged = 0
        self._outbox: deque[tuple[str, str, bytes]] = deque()
        # One long-lived publisher greenlet, woken when the outbox gains messages: spawning
        # one per burst cost a greenlet's creation (its frame stack mmapped, then unmapped)
        # per message when clients ping-pong one event at a time.
        self._publisher: gevent.Greenlet | None = None
        self._wake = gevent.event.Event()
        self._idle = False  # the publisher waits on _wake
        self._stopping = False
        self._stale_slots = False  # the Cluster publisher's slot map needs refreshing
        # Plain-int tallies for metrics, folded in by `State.export_metrics`.
        self.received = 0
        self.dropped = 0
        self.published = 0
        hub.on_interest = self.interest

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
        ordered: bool = False,
    ) -> None:
        # What follows cluster-wide state (member events, watchlist notices, counts) is
        # published by whichever node changed it; two nodes' messages about one roster must
        # reach every socket in one order, so these are heard back through Redis like every
        # other node hears them (one order everywhere), unless Redis is not there to ask.
        ordered = ordered or version is not None or kind == WATCH
        heard_back = ordered and here and self.ready()
        if here and not heard_back:
            # This node's subscribers never wait on Redis: they get the message now, and the
            # listener skips its echo (the header names this node), so a message that Redis
            # takes late (a pause, a failover) or twice never reaches them twice.
            self.hub.dispatch(app_id, kind, target, payload, exclude, version)
        # The node first: the listener knows its own echo by these bytes alone (`_echo`);
        # "o" before them marks a message this node must hear back.
        header: dict[str, Any] = {"o": 1} if heard_back else {}
        header["n"] = self.node
        header["k"] = kind
        header["c"] = target
        if exclude:
            header["x"] = exclude
        if version is not None:
            header["v"] = version
        if not self.link.up:
            self._failed(app_id, "Redis is unreachable")
            return
        if len(self._outbox) >= PUBLISH_QUEUE:
            self._failed(app_id, "too many messages waiting for Redis")
            return
        message = json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload
        topic = keys.pubsub_topic(self.prefix, app_id, *topic_of(kind, target))
        self._outbox.append((app_id, topic, message))
        if self._publisher is None:
            self._publisher = gevent.spawn(self._publish_forever)
        elif self._idle:
            self._idle = False
            self._wake.set()

    def _publish_forever(self) -> None:
        """PUBLISH what waits, in order; what accumulated meanwhile goes in one pipeline.

        The caller of `publish` never waits for Redis, and one connection carries the lot:
        hundreds of greenlets each holding a pooled connection for one PUBLISH would exhaust
        the pool under load. A batch Redis did not take is counted (this node had it already).
        """
        outbox = self._outbox
        try:
            while True:
                while outbox:
                    batch = [outbox.popleft() for _ in range(min(len(outbox), PUBLISH_BATCH))]
                    try:
                        self._send(batch)
                    except self.errors as exc:
                        self.link.mark_down(exc)
                        for app_id, _topic, _message in batch:
                            self._failed(app_id, str(exc))
                if self._stopping:
                    return
                self._wake.clear()
                self._idle = True
                self._wake.wait()
        finally:  # an unexpected error: the next publish starts another
            self._publisher = None
            self._idle = False

    def _send(self, batch: list[tuple[str, str, bytes]]) -> None:
        client = self.link.publisher
        self.published += len(batch)
        if not self.link.config.cluster:
            self._publish_to(client, batch)
            return
        if len(batch) == 1:
            _app_id, topic, message = batch[0]
            (client.spublish if self.sharded else client.publish)(topic, message)
            return
        # Not a Cluster pipeline: it sends again, one by one, the commands of a connection
        # that failed, and a PUBLISH that timed out may have gone out already. Each master
        # gets its share in one write instead (any one node for unsharded PUBLISH,
        # which reaches every node of a Cluster); a share that fails is lost, and counted.
        if self._stale_slots:  # a failover moved slots: ask where they are now
            client.nodes_manager.initialize()
            self._stale_slots = False
        shares: dict[str, tuple[Any, list[tuple[str, str, bytes]]]] = {}
        for item in batch:
            node = client.get_node_from_key(item[1]) if self.sharded else client.get_default_node()
            shares.setdefault(node.name, (node, []))[1].append(item)
        failure: BaseException | None = None
        for node, share in shares.values():
            try:
                if self._publish_to(client.get_redis_connection(node), share):
                    self._stale_slots = True
            except self.errors as exc:
                failure = exc
                self._stale_slots = True
                for app_id, _topic, _message in share:
                    self._failed(app_id, str(exc))
        if failure is not None:
            self.link.mark_down(failure)

    def _publish_to(self, client: Any, batch: list[tuple[str, str, bytes]]) -> int:
        """PUBLISH (SPUBLISH) a batch on one pooled connection of one server: the commands in
        one write, then their replies; how many it refused (counted as failed, e.g. MOVED: the
        slot left that master). redis-py's Pipeline cost more CPU than the PUBLISH itself when
        clients ping-pong one event at a time: a batch of one per message."""
        command = "SPUBLISH" if self.sharded else "PUBLISH"
        pool = client.connection_pool
        conn = pool.get_connection()
        refused = 0
        try:
            conn.send_packed_command(
                conn.pack_commands([(command, topic, message) for _a, topic, message in batch])
            )
            for app_id, _topic, _message in batch:
                try:
                    conn.read_response()
                except ResponseError as exc:  # this one refused; the connection is fine
                    refused += 1
                    self._failed(app_id, str(exc))
        except BaseException:
            conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            pool.release(conn)
        return refused

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

    # --- routing ------------------------------------------------------------------------------

    def interest(self, app_id: str, kind: str, name: str, wanted: bool) -> None:
        """`Hub.on_interest`: subscribe a topic when its first local socket wants it; let it
        linger when the last one left."""
        topic = keys.pubsub_topic(self.prefix, app_id, kind, name)
        if not wanted:
            self._lingering[topic] = time.monotonic()
            if len(self._lingering) > MAX_LINGERING:
                self._drop(self._lingering.popitem(last=False)[0])
                self._sync_soon()
            return
        if self._lingering.pop(topic, None) is not None:
            return  # still subscribed
        self._want(topic, app_id)

    def routed(self, app_id: str, channel: str) -> None:
        """Return once Redis confirmed this node's subscription to `channel` (at most the
        Redis timeout; at once while Redis is down): called before a client's subscription is
        confirmed, so that what others publish after it reaches the client."""
        if not self.link.up:
            return
        topic = keys.pubsub_topic(self.prefix, app_id, CHANNEL, channel)
        listener = self._placed.get(topic)
        if listener is not None:  # connecting or connected: its next batch asks for it
            listener.wait(topic, self.link.config.timeout)

    def _want(self, topic: str, app_id: str) -> None:
        key = topic.encode()
        if key in self._wanted:
            return
        self._wanted[key] = app_id
        if self._started:
            self._place(topic)
            self._sync_soon()

    def _drop(self, topic: str) -> None:
        self._wanted.pop(topic.encode(), None)
        listener = self._placed.pop(topic, None)
        if listener is not None:
            listener.topics.discard(topic)

    def _place(self, topic: str) -> None:
        """Give `topic` to the listener of its server (its shard's master when sharded)."""
        try:
            address = self._address(topic)
        except self.errors as exc:  # slots unknown mid-failover: placed by the reshard
            self.link.mark_down(exc)
            self.listener_failed(None)
            return
        self._assign(topic, address)

    def _address(self, topic: str) -> tuple[str, int] | None:
        if not self.sharded:
            return None
        node = self.link.client.get_node_from_key(topic)  # the client's slot map: no I/O
        return (node.host, node.port)

    def _assign(self, topic: str, address: tuple[str, int] | None) -> None:
        listener = self._listeners.get(address)
        if listener is None:
            listener = self._listeners[address] = Listener(self, address)
            listener.start()
        listener.topics.add(topic)
        self._placed[topic] = listener

    def _sync_soon(self) -> None:
        """Send the subscription changes once the greenlets running now have made theirs."""
        self._dirty = True
        if self._syncer is None:
            self._syncer = gevent.spawn(self._sync)

    def _sync(self) -> None:
        try:
            while self._dirty:  # changes made while a write yielded go out in the next round
                self._dirty = False
                for address, listener in list(self._listeners.items()):
                    if not listener.topics and address is not None:
                        listener.stop()  # a shard this node has nothing on any more
                        del self._listeners[address]
                        continue
                    listener.sync()
        finally:
            self._syncer = None

    def _expire_forever(self) -> None:
        """Unsubscribe the topics that lingered LINGER seconds without a socket."""
        while True:
            gevent.sleep(LINGER / 4)
            deadline = time.monotonic() - LINGER
            expired = False
            while self._lingering:
                topic, since = next(iter(self._lingering.items()))
                if since > deadline:
                    break
                del self._lingering[topic]
                self._drop(topic)
                expired = True
            if expired:
                self._sync_soon()

    def listener_failed(self, listener: Listener | None) -> None:
        """A listener lost its connection: on a sharded Cluster, where the slots are may have
        changed (a failover), so every topic is placed again."""
        if self.sharded and self._resharding is None:
            self._resharding = gevent.spawn(self._reshard)

    def _reshard(self) -> None:
        backoff = reconnect_backoff()
        try:
            while True:
                try:
                    self.link.client.nodes_manager.initialize()
                    # No yield from here to the end: the placement matches `_wanted`.
                    placement = {
                        topic: self._address(topic) for topic in (k.decode() for k in self._wanted)
                    }
                    break
                except self.errors as exc:
                    self.link.mark_down(exc)
                    gevent.sleep(backoff.next())
            self._placed = {}
            for listener in self._listeners.values():
                listener.topics = set()
            for topic, address in placement.items():
                self._assign(topic, address)
            self._sync_soon()
        finally:
            self._resharding = None

    # --- receiving ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the listener greenlet(s): one, or one per shard with sharded Pub/Sub."""
        if self._started:
            return
        gevent.spawn(self._start_listeners)

    def _start_listeners(self) -> None:
        if self.link.config.cluster and self.link.config.sharded_pubsub != "false":
            # Sharded Pub/Sub needs to know the servers; wait for Redis like everyone else.
            backoff = reconnect_backoff()
            while True:
                try:
                    self.sharded = self.link.sharded()
                    if self.sharded:
                        self.link.client.get_node_from_key("x")  # the slots are known
                    break
                except self.errors as exc:
                    self.link.mark_down(exc)
                    gevent.sleep(backoff.next())
        for app_id in self.app_ids:
            self._wanted.setdefault(keys.pubsub_channel(self.prefix, app_id).encode(), app_id)
        self._started = True
        for key in list(self._wanted):
            self._place(key.decode())
        self._sync_soon()
        gevent.spawn(self._expire_forever)

    def watch_apps(self, app_ids: tuple[str, ...]) -> None:
        """Also listen to these apps' control channels (apps added by a reload).

        Only ever added: a removed app's messages find no socket here anyway. (Events need
        nothing here: their channels are subscribed when a socket subscribes.)
        """
        for app_id in app_ids:
            self._want(keys.pubsub_channel(self.prefix, app_id), app_id)

    def stop(self) -> None:
        """Publish what still waits (briefly), then close the Pub/Sub connections."""
        self._stopping = True
        if self._publisher is not None:
            self._wake.set()
            self._publisher.join(timeout=STOP_FLUSH)
        for listener in self._listeners.values():
            listener.stop()

    def ready(self) -> bool:
        """True while Redis answers and every listener is subscribed."""
        return (
            self.link.up
            and self._started
            and all(listener.live for listener in self._listeners.values())
        )

    def take_tallies(self) -> tuple[int, int, int, int]:
        """(Pub/Sub messages received, dropped, published) since the last call, and the
        Pub/Sub channels subscribed now, for ipe.metrics."""
        tallies = (self.received, self.dropped, self.published, len(self._wanted))
        self.received = self.dropped = self.published = 0
        return tallies

    def receive_batch(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Carry out messages from Redis, in order: parse each header, hand the payloads to
        the hub; consecutive events of one channel go together (one write per socket)."""
        run: list[tuple[bytes, str | None, int | None]] = []
        run_key: tuple[str, str] | None = None
        for channel, data in messages:
            parsed = self._parse(channel, data)
            if parsed is None:
                continue
            app_id, kind, target, payload, exclude, version = parsed
            if kind == EVENT:
                if run_key != (app_id, target):
                    self._deliver_run(run_key, run)
                    run_key, run = (app_id, target), []
                run.append((payload, exclude, version))
                continue
            self._deliver_run(run_key, run)
            run_key, run = None, []
            self._dispatch(app_id, kind, target, payload, exclude, version)
        self._deliver_run(run_key, run)

    def _parse(
        self, channel: bytes, data: bytes
    ) -> tuple[str, str, str, bytes, str | None, int | None] | None:
        """(app_id, kind, target, payload, exclude, version) of a message this node should
        carry out, or None."""
        self.received += 1
        if data.startswith(self._echo):
            return None  # its publisher, this node, delivered it here already
        app_id = self._wanted.get(channel)
        if app_id is None:
            return None  # a topic just unsubscribed: nobody here wants it
        newline = data.find(b"\n")
        try:
            header = json.loads(data[:newline]) if newline > 0 else None
            kind, target = header["k"], header["c"]  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            self.dropped += 1
            log.warning("ignoring a malformed message on %r", channel[:100])
            return None
        return app_id, kind, target, data[newline + 1 :], header.get("x"), header.get("v")

    def _deliver_run(
        self, key: tuple[str, str] | None, run: list[tuple[bytes, str | None, int | None]]
    ) -> None:
        if not run or key is None:
            return
        app_id, channel = key
        if len(run) == 1:
            self._dispatch(app_id, EVENT, channel, *run[0])
            return
        try:
            self.hub.deliver_batch(app_id, channel, run)
        except Exception:  # one bad message must not cost the subscription
            self.dropped += len(run)
            log.exception("error delivering messages of app %s", app_id)

    def _dispatch(
        self,
        app_id: str,
        kind: str,
        target: str,
        payload: bytes,
        exclude: str | None,
        version: int | None,
    ) -> None:
        try:
            self.hub.dispatch(app_id, kind, target, payload, exclude, version)
        except Exception:  # one bad message must not cost the subscription
            self.dropped += 1
            log.exception("error delivering a message of app %s", app_id)
