"""pusher-js's HTTP sessions across processes: the requests of one session reach whichever
gunicorn worker (or host behind a load balancer) accepts their connection, and Redis carries
them to the process that holds the session (`ipe.http_transport.HttpSessions`).

The process that opens a session records itself as its owner (`keys.http_owner`, with a TTL
refreshed while the session lives, deleted when it ends). A process that gets a request for
a session it does not hold looks the owner up; with none, it opens the session itself (as a
single process does). Otherwise every node listens on its own Pub/Sub channel
(`keys.http_node`) and:

- an `xhr_send` is forwarded to the owner (its messages are handled there, in order) and
  answered 204 at once;
- a receive request (a stream, a poll) becomes a relay: it asks the owner to attach it as
  the session's receiver; the owner runs the very same stream/poll loop as for a local
  request and publishes each line it would write to the relay's node channel, then an end
  marker; the relay writes the lines to its response. A relay whose client hangs up tells
  the owner, which detaches it as it would a local request whose client hung up.

The messages are `{"k": kind, ...}` (one JSON line), a newline, and a body:

  s  send     to the owner: {"s": sid}, body the xhr_send's JSON array
  a  attach   to the owner: {"s": sid, "r": relay id, "n": relay node, "m": transport}
  d  detach   to the owner: {"r": relay id, "o": 1 if the relay overflowed}
  k  ack      to the relay: {"r": relay id} (the owner holds the session: lines follow)
  l  line     to the relay: {"r": relay id, "n": owner node}, body one response line
  e  end      to the relay: {"r": relay id, "g": 1 if the owner does not hold the session}

Everything is bounded: a relay buffers at most `max_outbox_bytes` (then the session is
closed 4100, as a local one would be), an owner queues at most `INBOX_MAX` forwarded sends
per session, and the Redis outbox at most `OUTBOX_MAX` messages. A relay that hears nothing
from the owner (gone) ends its response; an owner whose relay's node stops answering (its
channel has no listener, or its heartbeat expired) detaches it as hung up.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from ipe import protocol
from ipe.http_transport import HEARTBEAT, POLL_WAIT
from ipe.redis import keys
from ipe.redis.link import REDIS_ERRORS
from ipe.redis.listener import Listener
from ipe.redis.scripts import Script

if TYPE_CHECKING:
    from ipe.http_transport import HttpClient, HttpSessions
    from ipe.metrics import Metrics
    from ipe.redis.link import RedisLink

log = logging.getLogger(__name__)

OUTBOX_MAX = 10000  # messages waiting for Redis; beyond, new ones are dropped (logged)
OUTBOX_BATCH = 256  # messages per pipeline
INBOX_MAX = 64  # forwarded xhr_sends waiting for one session on its owner
# How long a relay waits for the owner's ack before taking it for gone: a Redis round trip
# each way and the owner's listener, with room for a loaded machine.
ACK_WAIT = 3.0
# An owner writes a line at least every HEARTBEAT (stream) or ends within POLL_WAIT (poll):
# a relay that hears nothing for longer than this has lost its owner.
OWNER_SILENCE = max(HEARTBEAT, POLL_WAIT) + 10.0
# The heartbeat line a relay-bound stream sends: the moment to check the relay is alive.
_HEARTBEAT_LINE = b"h\n"

# Delete a session's owner record only if it still names this node (a relay may have taken
# the session over from an owner it thought gone).
RELEASE = Script(
    "http_release",
    r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
    keys=("owner_key",),
    args=("node",),
)


class _RemoteHangup:
    """The hang-up signal of a receive request served through a relay on another node: the
    same interface as `ipe.http_transport._Hangup`, set by the relay's detach message."""

    __slots__ = ("seen", "_wake")

    def __init__(self) -> None:
        self.seen = False
        self._wake: gevent.event.Event | None = None

    def notify(self, wake: gevent.event.Event) -> None:
        self._wake = wake
        if self.seen:
            wake.set()

    def stop(self) -> None:
        self._wake = None

    def hang_up(self) -> None:
        self.seen = True
        if self._wake is not None:
            self._wake.set()


class _Relay:
    """What a relay node has heard from the owner for one of its receive requests."""

    __slots__ = ("lines", "size", "wake", "acked", "ended", "gone", "overflow", "heard")

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.size = 0
        self.wake = gevent.event.Event()
        self.acked = False
        self.ended = False
        self.gone = False
        self.overflow = False  # more than max_outbox_bytes waited: the session is closed 4100
        self.heard = time.monotonic()


class HttpRouter:
    """This node's side of cross-process HTTP sessions: owner records, forwarding, relays."""

    def __init__(self, link: RedisLink, sessions: HttpSessions, metrics: Metrics) -> None:
        self.link = link
        self.node = link.node
        self.sessions = sessions
        # What `Listener` (shared with the broker) expects of its owner.
        self.metrics = metrics
        self.sharded = False
        self.channel = keys.http_node(link.prefix, self.node)
        self._listener: Listener | None = None
        self._replacing: gevent.Greenlet | None = None
        self._ids = itertools.count(1)
        self._relays: dict[str, _Relay] = {}  # relay id -> what its owner sent (relay side)
        self._remote: dict[str, tuple[HttpClient, _RemoteHangup]] = {}  # owner side
        self._inbox: dict[str, deque[list[str]]] = {}  # sid -> forwarded sends (owner side)
        # (channel, message, on_lost) to PUBLISH, or (key, None, None) to release, in order.
        self._outbox: deque[tuple[str, bytes | None, Callable[[], None] | None]] = deque()
        self._writer: gevent.Greenlet | None = None
        self._refresher: gevent.Greenlet | None = None
        self._dropped_logged = 0.0

    # --- timing -------------------------------------------------------------------------------

    @property
    def _timeout(self) -> float:
        return self.sessions.state.config.http_session_timeout

    def _refresh_interval(self) -> float:
        return max(0.5, self._timeout / 3)

    def _ttl_ms(self) -> int:
        """An owner record outlives its last refresh by well over a refresh interval."""
        return int((2 * self._timeout + self._refresh_interval()) * 1000)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on this node's channel and keep the owner records alive (after fork)."""
        if self._listener is None:
            gevent.spawn(self._start_listener)
            self._refresher = gevent.spawn(self._refresh_forever)

    def _start_listener(self) -> None:
        if self.link.config.cluster and self.link.config.sharded_pubsub != "false":
            while True:  # sharded Pub/Sub needs to know the servers: wait for Redis
                try:
                    self.sharded = self.link.sharded()
                    address = self._address()
                    break
                except REDIS_ERRORS as exc:
                    self.link.mark_down(exc)
                    gevent.sleep(1.0)
        else:
            address = None
        self._listen(address)

    def _address(self) -> tuple[str, int] | None:
        """The master of this node's channel's slot (sharded Pub/Sub), else None."""
        if not self.sharded:
            return None
        node = self.link.client.get_node_from_key(self.channel)
        return (node.host, node.port)

    def _listen(self, address: tuple[str, int] | None) -> None:
        self._listener = Listener(self, address)  # type: ignore[arg-type]
        self._listener.topics.add(self.channel)
        self._listener.start()

    def listener_failed(self, listener: Listener | None) -> None:
        """Called by the listener after losing its connection: after a Cluster failover the
        channel's slot may have moved to another master."""
        if self.sharded and self._replacing is None:
            self._replacing = gevent.spawn(self._replace_listener)

    def _replace_listener(self) -> None:
        try:
            self.link.client.nodes_manager.initialize()
            address = self._address()
        except REDIS_ERRORS as exc:
            self.link.mark_down(exc)
            return
        finally:
            self._replacing = None
        old = self._listener
        if old is not None and old.address != address:
            old.stop()
            self._listen(address)

    def stop(self) -> None:
        """Stop listening and refreshing; the owner records expire by themselves."""
        if self._refresher is not None:
            self._refresher.kill(block=False)
            self._refresher = None
        if self._listener is not None:
            self._listener.stop()

    # --- owner records ------------------------------------------------------------------------

    def owner_of(self, sid: str) -> str | None:
        """The node holding session `sid`, if another one does (None: open it here)."""
        key = keys.http_owner(self.link.prefix, sid)
        owner = self.link.either(lambda c: c.get(key), lambda: None)
        if owner is None:
            return None
        owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        return None if owner == self.node else owner

    def opened(self, sid: str) -> None:
        """Record this node as the owner of `sid` before its first line goes out (the
        client's next request may reach another node at once)."""
        key = keys.http_owner(self.link.prefix, sid)
        ttl = self._ttl_ms()
        self.link.either(lambda c: c.set(key, self.node, px=ttl), lambda: None)

    def ended(self, sid: str) -> None:
        """Session `sid` ended here: drop its owner record (without waiting for Redis)."""
        self._inbox.pop(sid, None)
        self._queue(keys.http_owner(self.link.prefix, sid), None, None)

    def _refresh_forever(self) -> None:
        while True:
            gevent.sleep(self._refresh_interval())
            sids = list(self.sessions.sessions)
            if not sids or not self.link.up:
                continue
            ttl = self._ttl_ms()
            prefix = self.link.prefix
            try:
                # SET, not PEXPIRE: after a Redis restart the records come back.
                for start in range(0, len(sids), OUTBOX_BATCH):
                    pipe = self.link.client.pipeline(transaction=False)
                    for sid in sids[start : start + OUTBOX_BATCH]:
                        pipe.set(keys.http_owner(prefix, sid), self.node, px=ttl)
                    pipe.execute()
            except REDIS_ERRORS as exc:
                self.link.mark_down(exc)
            except Exception:  # never let the refresher die: records would expire
                log.exception("refreshing HTTP session owners failed")

    # --- relay side: requests for a session another node holds --------------------------------

    def forward_send(self, owner: str, sid: str, body: bytes) -> None:
        """Hand the messages of an `xhr_send` (its JSON array, checked) to the owner."""
        log.debug("HTTP session %s: forwarding a send to %s", sid, owner)
        self._message(owner, {"k": "s", "s": sid}, body)

    def relay(
        self,
        owner: str,
        sid: str,
        transport: str,
        hangup: Any,
        fallback: Callable[[], Iterator[bytes]],
    ) -> Iterator[bytes]:
        """The body of a receive request for a session `owner` holds: its lines, as the owner
        writes them; `fallback()` (the session opened here) if the owner does not answer."""
        rid = f"{self.node}/{next(self._ids)}"
        log.debug("HTTP session %s: relaying %s from %s", sid, transport, owner)
        relay = self._relays[rid] = _Relay()
        hangup.notify(relay.wake)
        finished = False
        try:
            self._message(
                owner, {"k": "a", "s": sid, "r": rid, "n": self.node, "m": transport}, b""
            )
            deadline = time.monotonic() + ACK_WAIT
            while not (relay.acked or relay.ended or hangup.seen):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                relay.wake.clear()
                relay.wake.wait(left)
            if hangup.seen:
                return
            if not relay.acked:
                finished = True  # nothing attached on the owner
                if not relay.ended:  # no answer at all: the owner is gone with the session
                    log.info(
                        "HTTP session %s: owner %s does not answer; opening it here", sid, owner
                    )
                    self._release(sid, owner)
                self._relays.pop(rid, None)
                hangup.stop()  # the local session watches the client itself
                yield from fallback()
                return
            while True:
                if relay.lines:
                    line = relay.lines.popleft()
                    relay.size -= len(line)
                    yield line
                    continue
                if relay.ended:
                    finished = True
                    return
                if hangup.seen or relay.overflow:
                    return
                relay.wake.clear()
                if not relay.wake.wait(OWNER_SILENCE) and not relay.lines:
                    log.info("HTTP session %s: owner %s went silent", sid, owner)
                    return
        finally:
            hangup.stop()
            self._relays.pop(rid, None)
            if not finished:  # the owner still has it attached: let it go
                self._message(owner, {"k": "d", "r": rid, "o": int(relay.overflow)}, b"")

    def _release(self, sid: str, owner: str) -> None:
        key = keys.http_owner(self.link.prefix, sid)
        self.link.either(lambda c: RELEASE(c, owner_key=key, node=owner), lambda: None)

    # --- owner side ---------------------------------------------------------------------------

    def _attach(self, sid: str, rid: str, relay_node: str, transport: str) -> None:
        channel = keys.http_node(self.link.prefix, relay_node)
        client = self.sessions.sessions.get(sid)
        if client is None:
            self._message_to(channel, {"k": "e", "r": rid, "g": 1}, b"")
            return
        self._message_to(channel, {"k": "k", "r": rid}, b"")
        hangup = _RemoteHangup()
        self._remote[rid] = (client, hangup)
        gevent.spawn(self._pump, client, hangup, rid, relay_node, channel, transport)

    def _pump(
        self,
        client: HttpClient,
        hangup: _RemoteHangup,
        rid: str,
        relay_node: str,
        channel: str,
        transport: str,
    ) -> None:
        """Serve a relay's receive request here, as a local one, line by line over Redis."""
        lines = client.stream(hangup) if transport == "xhr_streaming" else client.poll(hangup)
        line_header = {"k": "l", "r": rid, "n": self.node}
        header = json.dumps(line_header, separators=(",", ":")).encode() + b"\n"
        try:
            for line in lines:
                self._queue(channel, header + line, hangup.hang_up)
                if line == _HEARTBEAT_LINE and not self._alive(relay_node):
                    hangup.hang_up()
        except Exception:
            log.exception("error relaying HTTP session %s", client.sid)
        finally:
            lines.close()
            self._remote.pop(rid, None)
            if not hangup.seen:
                self._message_to(channel, {"k": "e", "r": rid}, b"")

    def _alive(self, node: str) -> bool:
        """False once `node`'s heartbeat has expired (the relay's process is gone)."""
        key = keys.heartbeat(self.link.prefix, node)
        return bool(self.link.either(lambda c: c.exists(key), lambda: True))

    def _detach(self, rid: str, overflow: bool) -> None:
        remote = self._remote.pop(rid, None)
        if remote is None:
            return
        client, hangup = remote
        if overflow:
            log.warning("closing %r: its relay holds too much (slow consumer)", client)
            self.metrics.slow_consumer_closes.inc()
            client.close(protocol.OVER_CAPACITY, "Client is not reading fast enough")
        hangup.hang_up()

    def _send(self, sid: str, body: bytes) -> None:
        try:
            messages = json.loads(body)
        except ValueError:
            return
        if not isinstance(messages, list):
            return
        inbox = self._inbox.get(sid)
        if inbox is None:
            if sid not in self.sessions.sessions:
                return  # ended meanwhile (a single process would answer 404)
            inbox = self._inbox[sid] = deque()
            gevent.spawn(self._deliver, sid, inbox)
        if len(inbox) >= INBOX_MAX:
            log.warning("HTTP session %s: %d forwarded sends wait; dropping one", sid, INBOX_MAX)
            return
        inbox.append([m for m in messages if isinstance(m, str)])

    def _deliver(self, sid: str, inbox: deque[list[str]]) -> None:
        """Handle one session's forwarded sends in the order they came (handlers may block
        on Redis: never in the listener)."""
        try:
            while inbox:
                messages = inbox.popleft()
                client = self.sessions.sessions.get(sid)
                if client is None:
                    return
                client.receive(messages)
        finally:
            if self._inbox.get(sid) is inbox:
                del self._inbox[sid]

    # --- messages -----------------------------------------------------------------------------

    def receive_batch(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Messages on this node's channel, in order (called by the listener)."""
        for channel, data in messages:
            self.receive(channel, data)

    def receive(self, channel: bytes, data: bytes) -> None:
        """One message on this node's channel (called by the listener: never blocks)."""
        newline = data.find(b"\n")
        try:
            header = json.loads(data[:newline]) if newline > 0 else None
            kind = header["k"]  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed message on %r", channel[:100])
            return
        body = data[newline + 1 :]
        try:
            if kind == "l" or kind == "k" or kind == "e":
                self._heard(header, kind, body)
            elif kind == "s":
                self._send(header["s"], body)
            elif kind == "a":
                self._attach(header["s"], header["r"], header["n"], header["m"])
            elif kind == "d":
                self._detach(header["r"], bool(header.get("o")))
        except Exception:  # one bad message must not cost the subscription
            log.exception("error handling an HTTP routing message %r", data[:200])

    def _heard(self, header: dict[str, Any], kind: str, body: bytes) -> None:
        relay = self._relays.get(header["r"])
        if relay is None:
            if kind == "l" and "n" in header:
                # Its request is over but the owner still sends (our detach was lost).
                self._message(header["n"], {"k": "d", "r": header["r"], "o": 0}, b"")
            return
        relay.heard = time.monotonic()
        if kind == "l":
            if relay.overflow:
                return
            relay.lines.append(body)
            relay.size += len(body)
            if relay.size > self.sessions.state.config.max_outbox_bytes:
                # Its client does not read: the relay ends and tells the owner (4100).
                relay.lines.clear()
                relay.size = 0
                relay.overflow = True
        elif kind == "k":
            relay.acked = True
        else:
            relay.ended = True
            relay.gone = bool(header.get("g"))
        relay.wake.set()

    def _message(self, node: str, header: dict[str, Any], body: bytes) -> None:
        self._message_to(keys.http_node(self.link.prefix, node), header, body)

    def _message_to(self, channel: str, header: dict[str, Any], body: bytes) -> None:
        line = json.dumps(header, separators=(",", ":")).encode()
        self._queue(channel, line + b"\n" + body, None)

    def _queue(
        self, target: str, message: bytes | None, on_lost: Callable[[], None] | None
    ) -> None:
        """PUBLISH `message` to channel `target` (or release owner key `target` if None), in
        order, without waiting; `on_lost()` if it reached no listener."""
        if not self.link.up or len(self._outbox) >= OUTBOX_MAX:
            self._dropped("Redis is unreachable" if not self.link.up else "too many waiting")
            if on_lost is not None:
                on_lost()
            return
        self._outbox.append((target, message, on_lost))
        if self._writer is None:
            self._writer = gevent.spawn(self._write_waiting)

    def _dropped(self, reason: str) -> None:
        now = time.monotonic()
        if now - self._dropped_logged >= 1.0:
            self._dropped_logged = now
            log.warning("HTTP session routing message dropped: %s", reason)

    def _write_waiting(self) -> None:
        outbox = self._outbox
        # A PUBLISH's count of receivers is the whole truth on one server or a shard; a
        # cluster's plain PUBLISH counts one node's listeners only.
        counts = not self.link.config.cluster or self.sharded
        try:
            while outbox:
                batch = [outbox.popleft() for _ in range(min(len(outbox), OUTBOX_BATCH))]
                try:
                    results = self._write(batch)
                except REDIS_ERRORS as exc:
                    self.link.mark_down(exc)
                    results = [0] * len(batch)
                for (_target, message, on_lost), result in zip(batch, results, strict=True):
                    if on_lost is not None and message is not None and counts and not result:
                        on_lost()
        finally:
            self._writer = None

    def _write(self, batch: list[tuple[str, bytes | None, Any]]) -> list[Any]:
        client = self.link.client
        node = self.node
        if self.link.config.cluster:
            results = []
            for target, message, _ in batch:
                if message is None:
                    results.append(RELEASE(client, owner_key=target, node=node))
                elif self.sharded:
                    results.append(client.spublish(target, message))
                else:
                    results.append(client.publish(target, message))
            return results
        pipe = client.pipeline(transaction=False)
        for target, message, _ in batch:
            if message is None:
                pipe.eval(RELEASE.source, 1, target, node)
            else:
                pipe.publish(target, message)
        return list(pipe.execute())
