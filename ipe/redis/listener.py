"""One Pub/Sub connection of `ipe.redis.broker.RedisBroker`: it subscribes the topics the
broker assigns to it, hands every message to the broker, and reconnects until stopped.

The connection is a plain redis-py `Connection`, read by this listener's greenlet only; the
broker's routing greenlet writes SUBSCRIBE/UNSUBSCRIBE to it (`sync`), one batch of commands
in one write, and the acknowledgements come back to the reader in order. A subscription is
confirmed (`acked`, and `wait` returns) when Redis acknowledged it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from redis.crc import key_slot

from ipe.redis.link import REDIS_ERRORS, reconnect_backoff

if TYPE_CHECKING:
    from ipe.redis.broker import RedisBroker

log = logging.getLogger(__name__)
# redis-py's parser logs every Pub/Sub message at DEBUG ("push_response"), payloads (and so
# auth signatures) included; its own PubSub silences that logger the same way.
logging.getLogger("push_response").setLevel(logging.INFO)

COMMAND_CHUNK = 1000  # channels per (UN)SUBSCRIBE command
RECEIVE_BATCH = 64  # messages already read that go to the broker together
MESSAGES = (b"message", b"smessage")


def _as_is(response: Any) -> Any:
    return response


class Listener:
    """Subscribes `topics` on one server (the one server, or one Cluster shard)."""

    def __init__(self, broker: RedisBroker, address: tuple[str, int] | None) -> None:
        self.broker = broker
        self.address = address  # a Cluster shard's master; None: the server the link knows
        self.sharded = broker.sharded
        self.topics: set[str] = set()  # what should be subscribed (the broker's to change)
        self.acked: set[str] = set()  # what Redis confirmed on this connection
        self.live = False  # connected, and every topic of the first batch confirmed
        self._sent: set[str] = set()  # what was asked on this connection
        self._leaving: dict[str, int] = {}  # topic -> UNSUBSCRIBEs sent, not acknowledged yet
        self._waiters: dict[str, gevent.event.Event] = {}
        self._conn: Any = None
        self._stopped = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        # Never kill a greenlet blocked in redis-py (gevent/gevent#1929): close its connection
        # and let the loop see `_stopped`.
        self._stopped = True
        self.live = False
        self._close()

    def wait(self, topic: str, timeout: float) -> bool:
        """Wait (at most `timeout`) until Redis confirmed `topic`; True if it did."""
        if topic in self.acked:
            return True
        waiter = self._waiters.setdefault(topic, gevent.event.Event())
        if not waiter.wait(timeout) and self._waiters.get(topic) is waiter:
            del self._waiters[topic]  # never confirmed: hold nothing for it
        return topic in self.acked

    # --- writing (the broker's routing greenlet) ------------------------------------------------

    def sync(self) -> None:
        """Ask Redis for what `topics` gained and lost since the last call (writes only)."""
        conn = self._conn
        if conn is None or not self.live:
            return  # (re)connecting: the first batch subscribes `topics` as they are then
        add, drop = self.topics - self._sent, self._sent - self.topics
        if not add and not drop:
            return
        self._sent = set(self.topics)
        try:
            self._send(conn, add, drop)
        except REDIS_ERRORS as exc:
            log.warning("Redis Pub/Sub connection failed while subscribing: %s", exc)
            self._close()  # the reader notices and starts over

    def _send(self, conn: Any, add: set[str], drop: set[str]) -> None:
        commands: list[tuple[str, ...]] = []
        verbs = ("SSUBSCRIBE", "SUNSUBSCRIBE") if self.sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        for verb, topics in zip(verbs, (add, drop), strict=True):
            for group in self._groups(topics):
                commands.append((verb, *group))
        for topic in drop:
            self._leaving[topic] = self._leaving.get(topic, 0) + 1
        if commands:
            conn.send_packed_command(conn.pack_commands(commands))

    def _groups(self, topics: set[str]) -> list[list[str]]:
        """Topics in commands Redis accepts: SSUBSCRIBE takes channels of one slot only."""
        ordered = sorted(topics)
        if not self.sharded:
            return [ordered[i : i + COMMAND_CHUNK] for i in range(0, len(ordered), COMMAND_CHUNK)]
        by_slot: dict[int, list[str]] = {}
        for topic in ordered:
            by_slot.setdefault(key_slot(topic.encode()), []).append(topic)
        return list(by_slot.values())

    # --- reading ------------------------------------------------------------------------------

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # closing a broken connection may fail in many ways
                pass
        self.acked = set()
        self._leaving = {}
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()

    def _connect(self) -> Any:
        link = self.broker.link
        # Our own keep-alive below replaces redis-py's, whose PONGs are invisible to us.
        if self.address is None:
            client = link.pubsub_client(health_check_interval=0)
        else:
            import redis

            host, port = self.address
            client = redis.Redis(
                host=host, port=port, **{**link.kwargs, "health_check_interval": 0}
            )
        conn = client.connection_pool.get_connection()
        # redis-py's default handler of RESP3 pushes builds "Push response: " + str(message)
        # for a DEBUG line it then drops: a repr of every payload. Messages come as they are.
        parser = getattr(conn, "_parser", None)
        if hasattr(parser, "set_pubsub_push_handler"):
            parser.set_pubsub_push_handler(_as_is)
        return conn

    def _run(self) -> None:
        broker = self.broker
        link = broker.link
        interval = link.config.health_check_interval
        backoff = reconnect_backoff()
        failed = False
        delay = 0.0
        while not self._stopped:
            try:
                self._conn = conn = self._connect()
                first = set(self.topics)
                self._sent = set(first)
                pending = set(first)
                self._send(conn, first, set())
                if not pending:
                    self.live = True
                    failed = False
                heard = time.monotonic()
                pinged = 0.0
                while not self._stopped:
                    if self._conn is not conn:  # closed by `sync` after a failed write
                        raise ConnectionError("the Pub/Sub connection was closed")
                    if not conn.can_read(timeout=min(1.0, interval)):
                        # A half-open TCP connection delivers nothing and reports nothing:
                        # PING after `interval` of silence and give up without an answer.
                        now = time.monotonic()
                        if pinged and now - pinged > link.config.timeout:
                            raise ConnectionError("no answer to PING on the Pub/Sub connection")
                        if not pinged and now - heard > interval:
                            conn.send_command("PING")
                            pinged = now
                        continue
                    response = conn.read_response(disconnect_on_error=False, push_request=True)
                    heard = time.monotonic()
                    pinged = 0.0
                    if not isinstance(response, list):
                        continue  # +PONG outside subscribed mode
                    kind = response[0]
                    if kind == b"message" or kind == b"smessage":
                        # What has arrived already goes to the broker together: it hands a
                        # socket several messages of a channel in one write.
                        batch = [(response[1], response[2])]
                        response = None
                        while len(batch) < RECEIVE_BATCH and conn.can_read(timeout=0):
                            response = conn.read_response(
                                disconnect_on_error=False, push_request=True
                            )
                            if not isinstance(response, list) or response[0] not in MESSAGES:
                                break
                            batch.append((response[1], response[2]))
                            response = None
                        broker.receive_batch(batch)
                        if not isinstance(response, list):
                            continue
                        kind = response[0]
                    if kind == b"subscribe" or kind == b"ssubscribe":
                        topic = response[1].decode()
                        self.acked.add(topic)
                        waiter = self._waiters.pop(topic, None)
                        if waiter is not None:
                            waiter.set()
                        if pending:
                            pending.discard(topic)
                            if not pending:
                                self.live = True
                                self.sync()  # what changed while connecting
                                backoff.reset()
                                if failed:
                                    failed = False
                                    broker.metrics.redis_reconnects.inc()
                                    log.info("Redis Pub/Sub resubscribed (%d channels)", len(first))
                    elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                        topic = response[1].decode()
                        self.acked.discard(topic)
                        asked = self._leaving.get(topic, 0)
                        if asked > 1:
                            self._leaving[topic] = asked - 1
                        elif asked:
                            del self._leaving[topic]
                        elif topic in self._sent:
                            # Not asked: the server dropped it (its slot moved to another shard).
                            raise ConnectionError(f"Redis unsubscribed {topic!r} by itself")
            except REDIS_ERRORS as exc:
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
            broker.listener_failed(self)
            gevent.sleep(delay)
        self.live = False
