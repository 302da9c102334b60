"""The WebSocket side of the Pusher protocol: handshake, then a Session per connection.

Upgraded requests are routed here by `ipe.app` before Flask sees them, so a connection that
lives for hours holds no Flask request context. Messages reach `Session.on_message` in order,
one at a time; when the connection ends, `Session.cleanup` undoes everything it changed.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ipe import auth, channels, forwarded, origins, protocol, quotas
from ipe.connection import Client, Connection, Gate
from ipe.hub import EVENT, WATCH

if TYPE_CHECKING:
    from ipe.app import State
    from ipe.config import AppConfig
    from ipe.presence import Joined

log = logging.getLogger(__name__)

# pusher-js may prepend a path (its `wsPath` option), so the key is found at the end.
_APP_PATH = re.compile(r"(?:/.*)?/app/([^/]+)/?")


class Session:
    """The protocol state machine of one connection; its messages are handled one at a time."""

    def __init__(self, state: State, conn: Client, app: AppConfig) -> None:
        self.state = state
        self.conn = conn
        self.app = app
        self.limits = app.limits
        self.tally = state.hub.tally(app.app_id)

    # --- messages -----------------------------------------------------------------------------

    def on_message(self, raw: str) -> None:
        """Handle one client message; errors become a pusher:error, never a dropped socket."""
        self.tally.received += 1
        try:
            self.handle(raw)
        except protocol.PusherError as exc:
            self.conn.send_event(protocol.encode_error(exc.code, exc.message))
        except Exception:
            log.exception("error handling a message on %r", self.conn)
            self.conn.send_event(protocol.encode_error(None, "Internal server error"))

    def on_message_now(self, raw: str) -> bool:
        """Handle one client message at once if its handler never waits (a client event, a
        ping, a pong, a malformed message); False: it must go to the connection's greenlet.

        With Redis, subscribing waits for Redis; a client event only queues its PUBLISH. Run
        in the event loop's I/O callback, this spares a greenlet per message.
        """
        try:
            parsed = protocol.parse_client_message(raw)
        except protocol.PusherError:
            parsed = None  # answered by `on_message` without waiting
        if parsed is not None:
            event = parsed[0]
            if event not in _NEVER_WAIT and not event.startswith(protocol.CLIENT_EVENT_PREFIX):
                return False
        self.tally.received += 1
        try:
            self.handle(raw, parsed)
        except protocol.PusherError as exc:
            self.conn.send_event(protocol.encode_error(exc.code, exc.message))
        except Exception:
            log.exception("error handling a message on %r", self.conn)
            self.conn.send_event(protocol.encode_error(None, "Internal server error"))
        return True

    def handle(self, raw: str, parsed: tuple[str, str | None, Any] | None = None) -> None:
        """Dispatch one client message (`parsed`: its parse_client_message, if done already)."""
        event, channel, data = parsed or protocol.parse_client_message(raw)
        handler = _HANDLERS.get(event)
        if handler is not None:
            handler(self, channel, data)
        elif event.startswith(protocol.CLIENT_EVENT_PREFIX):
            self.on_client_event(event, channel, data)
        # Anything else is ignored, as Pusher does (protocol-notes.md §1.7, §9.7): a pusher:error
        # would surface in every pusher-js app as a connection error.

    def cleanup(self) -> None:
        """Undo every subscription and sign-in of the connection."""
        for channel in tuple(self.conn.channels):
            try:
                self.leave(channel)
            except Exception:
                log.exception("error leaving %s for %r", channel, self.conn)
        if self.conn.user_id is not None:
            try:
                self.sign_out()
            except Exception:
                log.exception("error signing out %r", self.conn)

    # --- ping ---------------------------------------------------------------------------------

    def on_ping(self, channel: str | None, data: Any) -> None:
        self.conn.send_event(protocol.encode_event(protocol.PONG))

    def on_pong(self, channel: str | None, data: Any) -> None:
        pass  # any inbound frame already counts as activity

    # --- subscriptions ------------------------------------------------------------------------

    def _subscribe_data(self, data: Any) -> tuple[str, dict[str, Any]]:
        payload = protocol.event_data_object(data)
        if payload is None:
            raise protocol.PusherError(
                protocol.GENERIC_RECONNECT, "Invalid subscribe data: expected an object"
            )
        channel = payload.get("channel")
        if not isinstance(channel, str) or not channel:
            raise protocol.PusherError(
                protocol.GENERIC_RECONNECT, "Invalid subscribe data: missing 'channel'"
            )
        return channel, payload

    def _refuse(self, channel: str, kind: str, error: str, status: int) -> None:
        """Send the channel-scoped error Echo's `.error()` receives, and Pusher's own."""
        log.debug(
            "subscription of %s to %s refused: %s",
            self.conn.socket_id,
            channel[:200],
            kind,
            extra=self._fields(channel[:200], status),
        )
        self.conn.send_event(protocol.subscription_error(channel, kind, error, status))
        self.conn.send_event(protocol.encode_error(None, error))
        if self.app.app_id in self.state.tap.apps:
            self.state.tap.emit(
                self.app.app_id,
                "subscription_refused",
                channel=channel[:200],
                socket_id=self.conn.socket_id,
                reason=f"{kind} {status}: {error[:300]}",
            )

    def on_subscribe(self, _channel: str | None, data: Any) -> None:
        channel, payload = self._subscribe_data(data)
        conn = self.conn
        cap = self.limits.max_subscriptions_per_connection
        if cap and len(conn.channels) >= cap and channel not in conn.channels:
            self.state.quotas.refused(self.app.app_id, quotas.SUBSCRIPTIONS)
            return self._refuse(
                channel,
                protocol.SUB_LIMIT_REACHED,
                f"More than {cap} channels subscribed on one connection",
                protocol.SUB_TOO_MANY,
            )
        try:
            who = channels.Subscriber(conn.socket_id, conn.user_id, conn.user_data)
            # Signed with the app as it is now (its secrets may have rotated since connecting).
            app = self.state.apps.current(self.app)
            member = channels.admit(who, app, self.limits, channel, payload)
            if channel in conn.channels:
                # Subscribing twice is harmless: confirm again, change nothing.
                return self._confirm(channel, self._roster(channel) if member else None)
        except channels.Refused as refused:
            return self._refuse(channel, refused.kind, refused.error, refused.status)
        self._subscribe(channel, member)

    def _subscribe(self, channel: str, member: channels.Member | None) -> None:
        """Join an admitted channel: confirm it, announce a new member, replay a cache."""
        conn = self.conn
        state = self.state
        app_id = self.app.app_id
        # Until the confirmation (and a cache channel's replay) has gone out, events for this
        # channel wait here (ipe.hub.deliver): with Redis, the round trips below let other
        # greenlets run, and no event may reach the client before subscription_succeeded.
        gate = Gate()
        if conn.gates is None:
            conn.gates = {}
        conn.gates[channel] = gate
        state.hub.add(app_id, channel, conn)
        conn.channels[channel] = member[0] if member else None
        version: int | None = None
        try:
            # This node's Redis subscription (asked for by hub.add) is confirmed before the
            # client's, so that what others publish after the confirmation reaches it.
            if member is None:
                count = state.presence.subscribe(app_id, channel)
                state.broker.routed(app_id, channel)  # it went out meanwhile
                if count == 1:
                    state.webhooks.emit(self.app, {"name": "channel_occupied", "channel": channel})
                self._confirm(channel, None)
            else:
                state.broker.routed(app_id, channel)  # not in the turn: the next can go on
                # The member limit is enforced where the roster changes, in one step (which
                # counts the subscription too), so concurrent joins on several nodes cannot
                # pass it together; the turn keeps this node's member events in version order.
                with state.presence.serial(app_id, channel):
                    joined = state.presence.join(
                        app_id, channel, *member, self.limits.max_presence_members
                    )
                    if joined is None:
                        gate.waiting = None  # nothing was confirmed: what waited is not for us
                        state.hub.remove(app_id, channel, conn)
                        del conn.channels[channel]
                        return self._refuse(
                            channel,
                            protocol.SUB_LIMIT_REACHED,
                            "The maximum members per presence channel limit was reached",
                            protocol.SUB_PRESENCE_FULL,
                        )
                    count = joined.count
                    if count == 1:
                        state.webhooks.emit(
                            self.app, {"name": "channel_occupied", "channel": channel}
                        )
                    version = self._joined(channel, member, joined)
            if protocol.is_cache(channel):
                self._replay_cache(channel)
        finally:
            self._release_waiting(channel, gate, version)
        # After the confirmation (and a cache channel's replay, which comes right after it).
        state.counts.changed(self.app, channel, count)
        if app_id in state.tap.apps:
            state.tap.emit(
                app_id,
                "subscribed",
                channel=channel,
                socket_id=conn.socket_id,
                user_id=member[0] if member else None,
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("subscribed %s to %s", conn.socket_id, channel, extra=self._fields(channel))

    def _fields(self, channel: str, status: int | None = None) -> dict[str, Any]:
        """The structured log fields of this connection (see ipe.logs)."""
        return {
            "app_id": self.app.app_id,
            "socket_id": self.conn.socket_id,
            "channel": channel,
            "status": status,
        }

    def _joined(self, channel: str, member: channels.Member, joined: Joined) -> int:
        """Confirm a joined presence channel with its roster and announce a new member; the
        roster's version."""
        state = self.state
        app_id = self.app.app_id
        first, roster, version, _count = joined
        self.conn.send_event(
            protocol.encode_event(protocol.SUBSCRIPTION_SUCCEEDED, channel, roster)
        )
        if first:
            state.broker.publish(
                app_id,
                EVENT,
                channel,
                protocol.member_added(channel, *member),
                self.conn.socket_id,
                version=version,
            )
            state.webhooks.emit(
                self.app, {"name": "member_added", "channel": channel, "user_id": member[0]}
            )
            if app_id in state.tap.apps:
                state.tap.emit(app_id, "member_added", channel=channel, user_id=member[0])
        return version

    def _release_waiting(self, channel: str, gate: Gate, version: int | None) -> None:
        """Send what waited for the confirmation, in order; from now on events flow directly.

        A presence channel keeps its roster's `version`, and member events no newer than
        the roster just sent are dropped: the roster already had them.
        """
        conn = self.conn
        waiting, gate.waiting = gate.waiting or [], None
        if version is None:
            self._drop_gate(channel)
        else:
            gate.version = version
        for event_version, frame in waiting:
            if event_version is None or version is None or event_version > version:
                conn.send(frame)

    def _drop_gate(self, channel: str) -> None:
        """Forget `channel`'s gate (roster version or waiting events), if the socket has one."""
        gates = self.conn.gates
        if gates:
            gates.pop(channel, None)
            if not gates:
                self.conn.gates = None  # most sockets have no gate: no empty dict for life

    def _roster(self, channel: str) -> dict[str, Any]:
        return self.state.presence.members(self.app.app_id, channel)

    def _confirm(self, channel: str, members: dict[str, Any] | None) -> None:
        data = "{}" if members is None else protocol.presence_data(members)
        self.conn.send_event(protocol.encode_event(protocol.SUBSCRIPTION_SUCCEEDED, channel, data))

    def _replay_cache(self, channel: str) -> None:
        cached = self.state.cache.get(self.app.app_id, channel)
        if cached is not None:
            self.conn.send_event(protocol.encode_event(cached.event, channel, cached.data))
            return
        self.conn.send_event(protocol.encode_event(protocol.CACHE_MISS, channel))
        self.state.webhooks.emit(self.app, {"name": "cache_miss", "channel": channel})

    def on_unsubscribe(self, _channel: str | None, data: Any) -> None:
        channel, _ = self._subscribe_data(data)
        if channel in self.conn.channels:
            self.leave(channel)

    def leave(self, channel: str) -> None:
        """Remove this connection from one channel, with member and vacancy events."""
        state = self.state
        conn = self.conn
        app_id = self.app.app_id
        user_id = conn.channels.pop(channel)
        state.hub.remove(app_id, channel, conn)
        self._drop_gate(channel)
        if user_id is None:
            last = False
        else:
            with state.presence.serial(app_id, channel):  # member events in version order
                last, version = state.presence.leave(app_id, channel, user_id)
                if last:
                    state.broker.publish(
                        app_id,
                        EVENT,
                        channel,
                        protocol.member_removed(channel, user_id),
                        version=version,
                    )
        if last:
            state.webhooks.emit(
                self.app, {"name": "member_removed", "channel": channel, "user_id": user_id}
            )
            if app_id in state.tap.apps:
                state.tap.emit(app_id, "member_removed", channel=channel, user_id=user_id)
        count = state.presence.unsubscribe(app_id, channel)
        if app_id in state.tap.apps:
            state.tap.emit(app_id, "unsubscribed", channel=channel, socket_id=conn.socket_id)
        # The count first: Pusher delays channel_vacated, so its receivers see 0 before it.
        state.counts.changed(self.app, channel, count)
        if count == 0:
            state.webhooks.emit(self.app, {"name": "channel_vacated", "channel": channel})

    # --- user sign-in -------------------------------------------------------------------------

    def on_signin(self, _channel: str | None, data: Any) -> None:
        payload = protocol.event_data_object(data)
        conn = self.conn
        app = self.state.apps.current(self.app)
        if payload is None:
            raise protocol.PusherError(protocol.UNAUTHORIZED, "Invalid signin data")
        user_data = payload.get("user_data")
        if not isinstance(user_data, str) or not auth.signin_valid(
            app.key, app.secrets, conn.socket_id, user_data, payload.get("auth")
        ):
            raise protocol.PusherError(protocol.UNAUTHORIZED, "Invalid signature for sign-in")
        try:
            user = protocol.loads(user_data)
        except ValueError:
            user = None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id:
            raise protocol.PusherError(
                protocol.UNAUTHORIZED, "user_data must be a JSON object with a non-empty string id"
            )
        if len(user_id) > self.limits.max_user_id_length:
            raise protocol.PusherError(protocol.UNAUTHORIZED, "User id is too long")
        if not protocol.CHANNEL_NAME_RE.fullmatch(user_id):
            # The id names the user's channel (#server-to-user-<id>) and is the path of REST
            # terminate_connections: an id that cannot be either could never be reached.
            raise protocol.PusherError(
                protocol.UNAUTHORIZED,
                "User id may only contain A-Z, a-z, 0-9 and _-=@,.;",
            )
        if conn.user_id is not None and conn.user_id != user_id:
            raise protocol.PusherError(
                protocol.UNAUTHORIZED, "This connection is already signed in as another user"
            )
        assert isinstance(user, dict)
        conn.send_event(
            protocol.encode_event(protocol.SIGNIN_SUCCESS, data={"user_data": user_data})
        )
        if conn.user_id is not None:
            return  # signing in again as the same user changes nothing
        conn.user_data = user
        state = self.state
        state.hub.sign_in(conn, user_id)
        if state.presence.user_online(app.app_id, user_id):
            state.broker.publish(app.app_id, WATCH, user_id, b"online")
        self._watch(user.get("watchlist"))

    def _watch(self, watchlist: Any) -> None:
        if not isinstance(watchlist, list) or not watchlist:
            return
        ids = [str(uid) for uid in watchlist if isinstance(uid, str | int) and str(uid)]
        limit = self.limits.max_watchlist_size
        if len(ids) > limit:
            ids = ids[:limit]
            self.conn.send_event(
                protocol.encode_error(
                    protocol.WATCHLIST_LIMIT,
                    f"Watchlist limit exceeded: only the first {limit} ids are watched",
                )
            )
        ids = list(dict.fromkeys(ids))
        self.state.hub.watch(self.conn, ids)
        online = self.state.presence.online(self.app.app_id, tuple(ids))
        events = []
        if online:
            events.append({"name": "online", "user_ids": [u for u in ids if u in online]})
        offline = [u for u in ids if u not in online]
        if offline:
            events.append({"name": "offline", "user_ids": offline})
        self.conn.send_event(
            protocol.encode_event(protocol.WATCHLIST_EVENTS, data={"events": events})
        )

    def sign_out(self) -> None:
        """Count the connection's user offline (on disconnect)."""
        conn = self.conn
        app_id = self.app.app_id
        assert conn.user_id is not None
        if self.state.presence.user_offline(app_id, conn.user_id):
            self.state.broker.publish(app_id, WATCH, conn.user_id, b"offline")

    # --- client events ------------------------------------------------------------------------

    def on_client_event(self, event: str, channel: str | None, data: Any) -> None:
        conn = self.conn
        app = self.app
        limits = self.limits
        if not app.user_events:
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED,
                "To send client events, you must enable this feature in the Settings.",
            )
        if channel is None:
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED, "Client event without a channel"
            )
        if not protocol.allows_client_events(channel):
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED,
                "Client event rejected - only supported on private and presence channels",
            )
        if channel not in conn.channels:
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED,
                f"Client event rejected - not subscribed to {channel}",
            )
        if len(event) > limits.max_event_name_length:
            raise protocol.PusherError(protocol.CLIENT_EVENT_REJECTED, "Event name too long")
        now = time.monotonic()
        if now - conn.events_window >= 1.0:
            conn.events_window = now
            conn.events_count = 0
        conn.events_count += 1
        if conn.events_count > limits.client_events_per_second:
            if app.app_id in self.state.tap.apps:
                self.state.tap.emit(
                    app.app_id,
                    "rate_limited",
                    channel=channel,
                    socket_id=conn.socket_id,
                    limit="client_events_per_second",
                )
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED, "Client event rejected due to rate limit"
            )
        # The data limit is measured as REST measures it: the UTF-8 bytes of the data string
        # (JSON text for an object), so that the same payload passes or fails both ways.
        if data is None:
            data = {}  # as encode_event sends it: clients that read `data` get an object
        text = data if isinstance(data, str) else protocol.dumps(data)
        size = len(text) if text.isascii() else len(text.encode())
        if size > limits.max_message_size:
            raise protocol.PusherError(
                protocol.CLIENT_EVENT_REJECTED, "Client event payload too large"
            )
        user_id = conn.channels[channel]
        # The object's JSON text is reused for the frame: data is serialized once.
        payload = protocol.encode_client_event(
            event, channel, protocol.dumps(data) if text is data else text, user_id
        )
        self.state.broker.publish(app.app_id, EVENT, channel, payload, conn.socket_id)
        if app.app_id in self.state.tap.apps:
            self.state.tap.emit(
                app.app_id,
                "client_event",
                channel=channel,
                event=event,
                socket_id=conn.socket_id,
                size=size,
                preview=text[:120],
            )
        if app.webhooks:
            webhook: dict[str, Any] = {
                "name": "client_event",
                "channel": channel,
                "event": event,
                "data": text,
                "socket_id": conn.socket_id,
            }
            if user_id is not None:
                webhook["user_id"] = user_id
            self.state.webhooks.emit(app, webhook)


# The pusher:* events a client may send. A class-level table: a dict of bound methods in each
# Session would cost ~600 bytes per connection and make every Session a reference cycle, freed
# only by the cyclic GC (a full collection pauses the hub for tens of ms with 2,000 sockets).
_HANDLERS = {
    protocol.PING: Session.on_ping,
    protocol.PONG: Session.on_pong,
    protocol.SUBSCRIBE: Session.on_subscribe,
    protocol.UNSUBSCRIBE: Session.on_unsubscribe,
    protocol.SIGNIN: Session.on_signin,
}
# The pusher:* events whose handlers never wait for Redis (see Session.on_message_now).
_NEVER_WAIT = frozenset((protocol.PING, protocol.PONG))


# --- handshake ----------------------------------------------------------------------------------


def handshake_error(environ: dict[str, Any], state: State) -> tuple[Any, int | None, str]:
    """(app, None, "") when the connection may proceed, else (app or None, code, message)."""
    match = _APP_PATH.fullmatch(environ.get("PATH_INFO", ""))
    if match is None:
        return None, protocol.PATH_NOT_FOUND, "Path not found"
    app = state.apps.by_key(match.group(1))
    if app is None:
        return None, protocol.APP_NOT_FOUND, f"Application does not exist: {match.group(1)[:64]}"
    if not app.enabled:
        return app, protocol.APP_DISABLED, "Application disabled"
    query = _query(environ.get("QUERY_STRING", ""))
    version = query.get("protocol")
    if version is None or version == "":
        return app, protocol.NO_PROTOCOL, "No protocol version supplied"
    # isdigit() alone admits "²" (which int() refuses) and "٧" (which int() reads as 7).
    if not (version.isascii() and version.isdigit()):
        return app, protocol.INVALID_VERSION, "Invalid version string format"
    if int(version) not in protocol.SUPPORTED_PROTOCOLS:
        return app, protocol.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {version[:8]}"
    if not _allowlist(app.allowed_origins).allows(environ.get("HTTP_ORIGIN")):
        return app, protocol.UNAUTHORIZED, "Origin not allowed"
    if app.only_ssl and not forwarded.is_secure(environ, state.config.trusted_proxies):
        return (
            app,
            protocol.SSL_ONLY,
            "Application only accepts SSL connections, reconnect using wss://",
        )
    if state.draining:  # it would be closed by the next batch of the drain anyway
        return app, protocol.GENERIC_RECONNECT, "Server is shutting down"
    return app, None, ""


@functools.lru_cache(maxsize=256)
def _allowlist(patterns: tuple[str, ...]) -> origins.Allowlist:
    """An app's compiled `allowed_origins` (compiled once per app)."""
    return origins.Allowlist(patterns)


def _query(query_string: str) -> dict[str, str]:
    return dict(parse_qsl(query_string, keep_blank_values=True))


def serve(state: State, environ: dict[str, Any]) -> None:
    """Take over one upgraded WebSocket request: handshake, then event-driven handling.

    Returns at once for a plain socket (the connection lives on without this greenlet); a TLS
    connection is read in this greenlet until it ends.
    """
    config = state.config
    app, code, message = handshake_error(environ, state)
    limits = app.limits if app is not None else state.config.limits
    conn = Connection(
        environ["wsgi.websocket"],
        app,
        protocol.new_socket_id(),
        max_outbox=config.max_outbox_bytes,
        # Room for the largest legitimate message: data within the limit, which a client's JSON
        # may have escaped to six bytes per byte ("\u00e9"), plus names and JSON around it.
        max_frame=limits.max_message_size * 6 + 16384,
        on_overflow=state.metrics.slow_consumer_closes.inc,
        inline=state.handlers_never_block,
    )
    remote = forwarded.client_address(environ, config.trusted_proxies)
    if code is not None:
        log.info(
            "refused connection from %s to %s: %d %s",
            remote,
            environ.get("PATH_INFO"),
            code,
            message,
            extra={"app_id": getattr(app, "app_id", None), "status": code, "remote_addr": remote},
        )
        conn.close(code, message, error=True)
    else:
        open_client(state, conn, app, remote, str(environ.get("HTTP_ORIGIN", ""))[:200])
    conn.start()


def open_client(
    state: State, conn: Client, app: AppConfig, remote: str, origin: str = ""
) -> None:
    """Register a new client (of any transport), greet it, and wire its messages to a Session;
    or refuse it with 4004 when its app is at `max_connections`."""
    maximum = app.limits.max_connections
    if maximum and not state.quotas.acquire_connection(app.app_id, maximum):
        state.quotas.refused(app.app_id, quotas.CONNECTIONS)
        log.info(
            "refused connection to app %s: %d Over connection quota",
            app.app_id,
            protocol.OVER_QUOTA,
            extra={"app_id": app.app_id, "status": protocol.OVER_QUOTA, "remote_addr": remote},
        )
        conn.close(protocol.OVER_QUOTA, "Over connection quota", error=True)
        return
    counted = bool(maximum)
    session = Session(state, conn, app)
    state.hub.register(conn)
    opened = time.monotonic()
    if app.app_id in state.tap.apps:
        state.tap.emit(app.app_id, "connected", socket_id=conn.socket_id, origin=origin)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "connected %s app=%s",
            conn.socket_id,
            app.app_id,
            extra={"app_id": app.app_id, "socket_id": conn.socket_id, "remote_addr": remote},
        )

    def on_end() -> None:
        try:
            session.cleanup()
        finally:
            state.hub.unregister(conn)
            if counted:
                state.quotas.release_connection(app.app_id)
            if app.app_id in state.tap.apps:
                state.tap.emit(
                    app.app_id, "disconnected", socket_id=conn.socket_id, code=conn.close_code
                )
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "disconnected %s app=%s code=%s",
                    conn.socket_id,
                    app.app_id,
                    conn.close_code,
                    extra={
                        "app_id": app.app_id,
                        "socket_id": conn.socket_id,
                        "status": conn.close_code,
                        "duration_ms": round((time.monotonic() - opened) * 1000),
                        "remote_addr": remote,
                    },
                )

    conn.on_message = session.on_message
    if not state.handlers_never_block:
        conn.on_message_now = session.on_message_now
    conn.on_end = on_end
    if app.authorized_connections:
        state.hub.expect_signin(conn, app.signin_timeout)
    conn.send_event(protocol.connection_established(conn.socket_id, state.config.activity_timeout))
