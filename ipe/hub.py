"""This process's sockets: who is connected, subscribed, signed in and watching. No Redis.

Delivery builds a frame once and offers the same bytes to every local subscriber; offering
never blocks (Connection.send), so one slow client cannot hold up a publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import gevent

from ipe import protocol
from ipe.connection import Connection
from ipe.frames import text_frame

log = logging.getLogger(__name__)

DRAIN_TICK = 0.1  # seconds between two batches of closes while draining
PING_FRAME = text_frame(protocol.encode_event(protocol.PING))

# Kinds of broker message (the envelope's "k"): what `Hub.dispatch` does with them.
EVENT = "e"  # target: channel name; payload: encoded event
TERMINATE = "t"  # target: user id; close that user's signed-in sockets
WATCH = "w"  # target: user id; payload: b"online" or b"offline"

# What this process listens for (`Hub.on_interest`): a channel's events, a signed-in user's
# (server-to-user events and terminate), a watched user's online/offline notices.
CHANNEL, USER, WATCHED = "c", "u", "w"


def topic_of(kind: str, target: str) -> tuple[str, str]:
    """The interest (CHANNEL/USER/WATCHED, name) a broker message of `kind` is for."""
    if kind == EVENT:
        user_id = protocol.server_to_user_id(target)
        return (CHANNEL, target) if user_id is None else (USER, user_id)
    return (USER, target) if kind == TERMINATE else (WATCHED, target)


class AppTally:
    """One app's plain-int counts since the last export (ipe.metrics folds them in once a
    second): counting in prometheus_client on every message would cost a lock and calls."""

    __slots__ = ("open", "opened", "received", "delivered", "bytes_in", "bytes_out", "closes")

    def __init__(self) -> None:
        self.open = 0  # a level, never reset
        self.opened = 0
        self.received = 0
        self.delivered = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.closes: dict[int, int] = {}  # close code -> count (bucketed when exported)

    def take(self) -> AppTally:
        """A copy of the counts, which start again from zero here."""
        taken = AppTally()
        taken.open = self.open
        taken.opened, self.opened = self.opened, 0
        taken.received, self.received = self.received, 0
        taken.delivered, self.delivered = self.delivered, 0
        taken.bytes_in, self.bytes_in = self.bytes_in, 0
        taken.bytes_out, self.bytes_out = self.bytes_out, 0
        taken.closes, self.closes = self.closes, {}
        return taken


class Hub:
    """Registry of local connections: app_id → channel → sockets, plus users and watchers."""

    def __init__(self, activity_timeout: int, pong_timeout: int) -> None:
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        # Seconds between liveness checks; shortened when a sign-in deadline needs it.
        self._interval = min(5.0, max(0.25, min(activity_timeout, pong_timeout) / 4))
        # Connections of authorized-connections apps that have not signed in yet -> deadline
        # (monotonic); the reaper closes them when it passes.
        self._unsigned: dict[Connection, float] = {}
        self.connections: dict[str, Connection] = {}
        self._channels: dict[str, dict[str, set[Connection]]] = {}
        self._users: dict[str, dict[str, set[Connection]]] = {}
        self._watchers: dict[str, dict[str, set[Connection]]] = {}
        self._reaper: gevent.Greenlet | None = None
        # Told (app_id, CHANNEL/USER/WATCHED, name, True/False) when this process gains its
        # first or loses its last socket interested in something (the Redis broker routes by it).
        self.on_interest: Callable[[str, str, str, bool], None] | None = None
        # Tallies for metrics, per app (apps are configured: the keys are bounded).
        self.tallies: dict[str, AppTally] = {}

    # --- connections --------------------------------------------------------------------------

    def tally(self, app_id: str) -> AppTally:
        """The tally of one app (made on first use)."""
        tally = self.tallies.get(app_id)
        if tally is None:
            tally = self.tallies[app_id] = AppTally()
        return tally

    def register(self, conn: Connection) -> None:
        """Track a new connection (for pings, terminate and socket-id lookups)."""
        self.connections[conn.socket_id] = conn
        tally = conn.tally = self.tally(conn.app.app_id)
        tally.open += 1
        tally.opened += 1

    def unregister(self, conn: Connection) -> None:
        """Forget a connection that has ended; its channels must already be removed."""
        self._unsigned.pop(conn, None)
        if self.connections.pop(conn.socket_id, None) is not None:
            tally = self.tally(conn.app.app_id)
            tally.open -= 1
            code = conn.close_code if conn.close_code is not None else protocol.WS_GOING_AWAY
            tally.closes[code] = tally.closes.get(code, 0) + 1
        if conn.user_id is not None:
            self._discard(self._users, USER, conn.app.app_id, conn.user_id, conn)
        self.unwatch(conn)

    def take_tallies(self) -> dict[str, AppTally]:
        """Each app's counts since the last call (and its open connections)."""
        return {app_id: tally.take() for app_id, tally in self.tallies.items()}

    def count(self, app_id: str | None = None) -> int:
        """Local connections, of one app or all."""
        if app_id is None:
            return len(self.connections)
        return sum(1 for c in self.connections.values() if c.app.app_id == app_id)

    # --- channels -----------------------------------------------------------------------------

    def add(self, app_id: str, channel: str, conn: Connection) -> bool:
        """Subscribe `conn`; True if it was not subscribed before."""
        return self._put(self._channels, CHANNEL, app_id, channel, conn)

    def remove(self, app_id: str, channel: str, conn: Connection) -> bool:
        """Unsubscribe `conn`; True if it was subscribed."""
        return self._discard(self._channels, CHANNEL, app_id, channel, conn)

    def _put(
        self,
        index: dict[str, dict[str, set[Connection]]],
        kind: str,
        app_id: str,
        key: str,
        conn: Connection,
    ) -> bool:
        by_key = index.setdefault(app_id, {})
        conns = by_key.get(key)
        if conns is None:
            conns = by_key[key] = set()
            if self.on_interest is not None:
                self.on_interest(app_id, kind, key, True)
        elif conn in conns:
            return False
        conns.add(conn)
        return True

    def _discard(
        self,
        index: dict[str, dict[str, set[Connection]]],
        kind: str,
        app_id: str,
        key: str,
        conn: Connection,
    ) -> bool:
        by_key = index.get(app_id)
        conns = by_key.get(key) if by_key else None
        if conns is None or conn not in conns:
            return False
        conns.discard(conn)
        if not conns:
            del by_key[key]  # type: ignore[index]
            if self.on_interest is not None:
                self.on_interest(app_id, kind, key, False)
        return True

    # --- users and watchlists -----------------------------------------------------------------

    def sign_in(self, conn: Connection, user_id: str) -> None:
        """Index a signed-in connection by its user id."""
        conn.user_id = user_id
        self._unsigned.pop(conn, None)
        self._put(self._users, USER, conn.app.app_id, user_id, conn)

    def expect_signin(self, conn: Connection, timeout: float) -> None:
        """Close `conn` with 4009 unless it signs in within `timeout` seconds (the reaper's)."""
        self._unsigned[conn] = time.monotonic() + timeout
        interval = max(0.25, timeout / 4)
        if interval < self._interval:
            # Apps come and go at runtime: the reaper speeds up for the shortest deadline seen
            # (restarted, so that its current, longer sleep does not delay this one).
            self._interval = interval
            if self._reaper is not None:
                self._reaper.kill(block=False)
                self._reaper = gevent.spawn(self._reap_forever)

    def watch(self, conn: Connection, user_ids: Iterable[str]) -> None:
        """Register `conn` to be told when any of `user_ids` goes online or offline."""
        conn.watchlist = tuple(user_ids)
        for user_id in conn.watchlist:
            self._put(self._watchers, WATCHED, conn.app.app_id, user_id, conn)

    def unwatch(self, conn: Connection) -> None:
        """Drop every watch of `conn`."""
        for user_id in conn.watchlist:
            self._discard(self._watchers, WATCHED, conn.app.app_id, user_id, conn)
        conn.watchlist = ()

    # --- delivery -----------------------------------------------------------------------------

    def dispatch(
        self,
        app_id: str,
        kind: str,
        target: str,
        payload: bytes,
        exclude: str | None,
        version: int | None = None,
    ) -> None:
        """Carry out one broker message on this process's sockets."""
        if kind == EVENT:
            self.deliver(app_id, target, payload, exclude, version)
        elif kind == TERMINATE:
            self.terminate_user(app_id, target)
        elif kind == WATCH:
            self.notify_watchers(app_id, target, payload == b"online")
        else:
            log.warning("ignoring broker message of unknown kind %r", kind)

    def deliver(
        self,
        app_id: str,
        channel: str,
        payload: bytes,
        exclude: str | None,
        version: int | None = None,
    ) -> int:
        """Send one encoded event to the local subscribers of `channel`; returns how many.

        A member event (`version` given) reaches only sockets whose roster is older than it.
        Any event waits with a socket whose subscription is not confirmed yet (see
        `ipe.connection.Gate`).
        """
        user_id = protocol.server_to_user_id(channel)
        if user_id is not None:
            # Server-to-user events reach every socket signed in as that user, subscribed or not.
            conns = self._users.get(app_id, {}).get(user_id)
        else:
            conns = self._channels.get(app_id, {}).get(channel)
        if not conns:
            return 0
        data = text_frame(payload)
        skip = self.connections.get(exclude) if exclude else None
        sent = 0
        for conn in tuple(conns):
            if conn is skip:
                continue
            if conn.gates is not None:  # rare: a presence roster, or a confirmation due
                sent += _send_gated(conn, channel, data, version)
            elif conn.send(data):
                sent += 1
        tally = self.tallies.get(app_id)
        if tally is not None:  # counted once per publish, not per subscriber
            tally.delivered += sent
            tally.bytes_out += sent * len(data)
        return sent

    def deliver_batch(
        self, app_id: str, channel: str, events: list[tuple[bytes, str | None, int | None]]
    ) -> int:
        """`deliver` of consecutive events of one channel ((payload, exclude, version) each),
        each socket getting them all in one write: one system call instead of one per event."""
        conns = self._channels.get(app_id, {}).get(channel)
        if protocol.server_to_user_id(channel) is not None or not conns:
            return sum(self.deliver(app_id, channel, *event) for event in events)
        frames = [text_frame(payload) for payload, _exclude, _version in events]
        whole = b"".join(frames)
        skips: dict[Connection, list[int]] = {}  # a socket excluded from some of them
        for i, (_payload, exclude, _version) in enumerate(events):
            skip = self.connections.get(exclude) if exclude else None
            if skip is not None:
                skips.setdefault(skip, []).append(i)
        sent = sent_bytes = 0
        for conn in tuple(conns):
            if conn.gates is None and conn not in skips:  # most sockets: all of them
                picked = frames
            else:
                picked = _picked(conn, channel, events, frames, skips.get(conn, ()))
                if not picked:
                    continue
            if conn.frames_in_one_send:
                data = whole if picked is frames else b"".join(picked)
                if conn.send(data):
                    sent += len(picked)
                    sent_bytes += len(data)
                continue
            for data in picked:  # a transport that takes one message per call
                if conn.send(data):
                    sent += 1
                    sent_bytes += len(data)
        tally = self.tallies.get(app_id)
        if tally is not None:
            tally.delivered += sent
            tally.bytes_out += sent_bytes
        return sent

    def terminate_user(self, app_id: str, user_id: str) -> int:
        """Close every local socket signed in as `user_id` (REST terminate_connections)."""
        conns = tuple(self._users.get(app_id, {}).get(user_id, ()))
        for conn in conns:
            conn.close(protocol.UNAUTHORIZED, "You got disconnected by the app.", error=True)
        return len(conns)

    def notify_watchers(self, app_id: str, user_id: str, online: bool) -> None:
        """Tell local watchers of `user_id` that it went online or offline."""
        conns = self._watchers.get(app_id, {}).get(user_id)
        if not conns:
            return
        name = "online" if online else "offline"
        data = text_frame(
            protocol.encode_event(
                protocol.WATCHLIST_EVENTS, data={"events": [{"name": name, "user_ids": [user_id]}]}
            )
        )
        sent = sum(1 for conn in tuple(conns) if conn.send(data))
        tally = self.tallies.get(app_id)
        if tally is not None:
            tally.delivered += sent
            tally.bytes_out += sent * len(data)

    # --- liveness -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the activity-timeout reaper (once per process, after fork)."""
        if self._reaper is None:
            self._reaper = gevent.spawn(self._reap_forever)

    def stop(self) -> None:
        """Stop the reaper."""
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None

    def _reap_forever(self) -> None:
        while True:
            gevent.sleep(self._interval)
            try:
                self.reap(time.monotonic())
            except Exception:  # never let liveness checks die silently
                log.exception("activity check failed")

    def reap(self, now: float) -> None:
        """Ping connections silent for activity_timeout; close those that never answered,
        and those of authorized-connections apps that did not sign in in time."""
        if self._unsigned:
            late = [conn for conn, deadline in self._unsigned.items() if deadline <= now]
            for conn in late:
                del self._unsigned[conn]
                conn.close(
                    protocol.UNAUTHORIZED, "Connection not signed in within the timeout", error=True
                )
        for conn in tuple(self.connections.values()):
            if conn.state:  # closing or gone
                continue
            if conn.ping_sent:
                if now - conn.ping_sent >= self.pong_timeout:
                    conn.close(protocol.PONG_NOT_RECEIVED, "Pong reply not received", error=True)
            elif now - conn.last_seen >= self.activity_timeout:
                conn.ping_sent = now
                conn.send(PING_FRAME)

    def close_app(self, app_id: str, code: int, reason: str) -> int:
        """Close every local connection of one app (it was disabled or removed)."""
        conns = [c for c in self.connections.values() if c.app.app_id == app_id]
        for conn in conns:
            conn.close(code, reason, error=True)
        return len(conns)

    def close_all(self, code: int, reason: str) -> None:
        """Close every local connection (shutdown: 4200 tells clients to reconnect at once)."""
        for conn in tuple(self.connections.values()):
            conn.close(code, reason, error=True)

    def drain(self, code: int, reason: str, seconds: float) -> None:
        """Close every local connection in even batches spread over `seconds` (blocking).

        Closing all at once on a rolling restart would send every client to the other nodes
        in the same second; spread out, they reconnect at the pace the drain sets. The caller
        refuses new connections meanwhile; any that slipped in go with the last batch.
        """
        conns = tuple(self.connections.values())
        ticks = max(1, round(seconds / DRAIN_TICK))
        started = time.monotonic()
        for tick in range(ticks):
            if not self.connections:
                return  # everyone left by themselves
            for conn in conns[tick * len(conns) // ticks : (tick + 1) * len(conns) // ticks]:
                if not conn.closing:
                    conn.close(code, reason, error=True)
            gevent.sleep(max(0.0, started + (tick + 1) * seconds / ticks - time.monotonic()))
        self.close_all(code, reason)


def _picked(
    conn: Connection,
    channel: str,
    events: list[tuple[bytes, str | None, int | None]],
    frames: list[bytes],
    skipped: Iterable[int],
) -> list[bytes]:
    """The frames of `events` a socket with gates (or excluded from some) gets now: none
    while its subscription is not confirmed (they wait for that, in the gate), and no member
    event its roster has already."""
    gate = conn.gates.get(channel) if conn.gates is not None else None
    picked = []
    for i, data in enumerate(frames):
        if i in skipped:
            continue
        version = events[i][2]
        if gate is not None:
            if gate.waiting is not None:  # not confirmed yet: it waits for that
                gate.waiting.append((version, data))
                continue
            seen = gate.version
            if version is not None and seen is not None and version <= seen:
                continue  # the roster this socket was sent already has this change
        picked.append(data)
    return picked


def _send_gated(conn: Connection, channel: str, data: bytes, version: int | None) -> int:
    """Send a frame to a socket that has gates (1 if sent): it waits while the socket's
    subscription is not confirmed, and a member event its roster has already is dropped."""
    gate = conn.gates.get(channel) if conn.gates is not None else None
    if gate is not None:
        if gate.waiting is not None:  # not confirmed yet: it waits for that
            gate.waiting.append((version, data))
            return 0
        seen = gate.version
        if version is not None and seen is not None and version <= seen:
            return 0  # the roster this socket was sent already has this change
    return 1 if conn.send(data) else 0
