"""One client WebSocket: its lifecycle, reading messages, a non-blocking bounded write path.

gevent-websocket performs the HTTP upgrade; after that this module owns the socket (taken over
by `ipe.handover`) and reads and writes frames itself (built and judged by `ipe.frames`). That
fixes three gevent-websocket 0.10.1 problems (docs/design-decisions.md): close codes are
really sent, pre-encoded UTF-8 goes out as a *text* frame, and an oversize frame is refused
from its header, its payload never held in memory.

An idle connection costs no greenlet. The socket is taken from pywsgi after the upgrade (its
handler greenlet, environ and 8 KB read buffer are then freed), and a libev watcher calls back
when bytes arrive; frames are parsed in that callback, and complete messages are handled by a
greenlet that exists only while there are messages to handle (or, when no handler can block,
right in the callback). A blocked greenlet costs about 8 KB, a watcher a few hundred bytes:
that is most of what a connection weighs. TLS sockets
cannot be read beside their SSL object, so they keep a reader greenlet.

Writes never block the caller: a frame is written straight to the socket when nothing is
pending; whatever the kernel does not take goes to a bounded outbox drained by one greenlet
that exists only while there is a backlog. A client that lets its outbox overflow is closed
with 4100, so a slow reader never holds up a publish to anyone else.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import gevent
import gevent.event

from ipe import protocol
from ipe.frames import (
    FIN,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    close_frame,
    frame,
    header_error,
    parse_header,
    peer_close_code,
    text_frame,
    unmask,
)
from ipe.handover import take_socket

log = logging.getLogger(__name__)

CLOSE_WAIT = 3.0  # seconds we wait for the peer's closing handshake before dropping TCP
READ_SIZE = 65536
# Messages read but not yet handled; beyond this the socket is not read until the handler
# catches up, so a client cannot queue unbounded work (TCP then slows it down).
INBOX_HIGH, INBOX_LOW = 64, 16
# The same in characters: 64 messages at the frame limit (~75 KB each) would be ~5 MB held
# for one connection; reading pauses at 256 KB waiting instead.
INBOX_BYTES_HIGH, INBOX_BYTES_LOW = 256 * 1024, 64 * 1024


class Lifecycle(IntEnum):
    """Where a connection is in its life; it only ever moves forward.

    OPEN -> CLOSING: `close` (ours; `_fail` for a client's error, `_overflow` for a slow
    reader), `_peer_closed` (answering the client's close), `_abort` (dropping TCP).
    -> ENDED: `_end` (EOF, or the closing handshake done); `_finish` then runs `on_end`.
    -> RELEASED: `_release` closes the socket, once the writer has flushed what it holds.
    """

    OPEN = 0  # reading and writing
    CLOSING = 1  # our close frame is out (or TCP is being dropped): nothing more is sent, and
    # what the peer still sends is read and dropped until its close frame arrives
    ENDED = 2  # reading has stopped; `on_end` runs once the queued messages are handled
    RELEASED = 3  # our socket is closed


OPEN, CLOSING, ENDED, RELEASED = Lifecycle


class Gate:
    """How events of one channel reach one socket, when not simply sent (rare: most sockets
    have none; see `ipe.hub.Hub.deliver` and `ipe.session.Session._subscribe`)."""

    __slots__ = ("waiting", "version")

    def __init__(self) -> None:
        # Until subscription_succeeded has gone out: the events that arrived, (version, frame).
        self.waiting: list[tuple[int | None, bytes]] | None = []
        # A presence channel: the version of the roster this socket was sent; member events
        # no newer than it are already in that roster.
        self.version: int | None = None


class Client:
    """One client of a transport, as the protocol sees it: identity, subscriptions, liveness.

    `Session`, `Hub` and the rest use only what is here plus `send` (a pre-built WebSocket
    text frame), `send_event` (a JSON payload), `close`, `start` and `closing`: a
    transport (`Connection` for WebSockets, `ipe.http_transport.HttpClient` for pusher-js's
    HTTP fallbacks) provides those.
    """

    __slots__ = (
        "socket_id",
        "app",
        "channels",
        "user_id",
        "user_data",
        "watchlist",
        "gates",
        "last_seen",
        "ping_sent",
        "state",
        "close_code",
        "events_window",
        "events_count",
        "on_message",
        "on_message_now",
        "on_end",
        "tally",
        "__weakref__",
    )

    # True when `send` takes several frames in one call (bytes of a WebSocket stream):
    # Hub.deliver_batch then writes a socket its events together.
    frames_in_one_send = False

    def __init__(self, app: Any, socket_id: str) -> None:
        self.socket_id = socket_id
        self.app = app
        self.channels: dict[str, Any] = {}  # channel -> presence user id or None
        self.user_id: str | None = None
        self.user_data: dict[str, Any] | None = None
        self.watchlist: tuple[str, ...] = ()
        # Channel -> its Gate, for channels being confirmed and presence channels; None while
        # empty, as for most sockets (no empty dict for life).
        self.gates: dict[str, Gate] | None = None
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        self.state = OPEN
        self.close_code: int | None = None
        self.events_window = 0.0
        self.events_count = 0
        self.on_message: Callable[[str], Any] = _ignore
        # With Redis: handles a message at once if its handler never waits, and says whether
        # it did (else the message is queued for a greenlet). See Session.on_message_now.
        self.on_message_now: Callable[[str], bool] | None = None
        self.on_end: Callable[[], Any] = _nothing
        self.tally: Any = None  # ipe.hub.AppTally of the app, once the connection is accepted

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.socket_id} app={getattr(self.app, 'app_id', None)}>"

    @property
    def closing(self) -> bool:
        """True once nothing more may be sent (the close has begun, or the connection ended)."""
        return self.state is not OPEN


class Connection(Client):
    """A client WebSocket: the two directions of its socket."""

    frames_in_one_send = True

    __slots__ = (
        "_sock",
        "_raw",
        "_raw_send",
        "_detached",
        "_watcher",
        "_rbuf",
        "_need",
        "_skip_left",
        "_parts",
        "_size",
        "_started",
        "_inbox",
        "_inbox_bytes",
        "_inline",
        "_worker",
        "_finished",
        "_resume",
        "_outbox",
        "_outbox_bytes",
        "_max_outbox",
        "_max_frame",
        "_on_overflow",
        "_closer",
    )

    def __init__(
        self,
        ws: Any,
        app: Any,
        socket_id: str,
        max_outbox: int,
        max_frame: int,
        on_overflow: Callable[[], Any] | None = None,
        inline: bool = False,
    ) -> None:
        super().__init__(app, socket_id)
        sock, pending, detached = take_socket(ws, READ_SIZE)
        self._sock = sock
        self._detached = detached
        # TLS sockets must go through the SSL object; plain ones are read and written raw.
        self._raw = sock._sock if detached else None
        self._raw_send = self._raw.send if detached else None
        self._watcher: Any = None
        # The start of an incomplete frame (None when there is none), grown in place as bytes
        # arrive, and how long it must be before parsing is worth trying again: a large frame
        # arriving a few bytes at a time is then copied once, not once per read.
        self._rbuf: bytearray | None = bytearray(pending) if pending else None
        self._need = 0
        self._skip_left = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._started: int | None = None
        # Made on first use and dropped once drained: an empty deque costs 760 bytes, a quarter
        # of an idle connection, and inline handling (no Redis) never needs it.
        self._inbox: deque[str] | None = None
        self._inbox_bytes = 0  # characters of the messages in _inbox
        self._inline = inline
        self._worker: Any = None
        self._finished: Any = None
        self._resume: Any = None  # TLS: set when the handler has caught up (see start)
        self._outbox: deque[bytes] | None = None
        self._outbox_bytes = 0
        self._max_outbox = max_outbox
        self._max_frame = max_frame
        self._on_overflow = on_overflow
        self._closer: Any = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading. Returns at once for a plain socket; a TLS socket is read here until
        the connection has ended, because pywsgi closes it when this greenlet returns."""
        if self._rbuf:
            data, self._rbuf = bytes(self._rbuf), None
            self._feed(data)
        if self._detached:
            if self.state < ENDED:
                self._watcher = gevent.get_hub().loop.io(self._raw.fileno(), 1)
                self._watcher.start(self._on_readable)
            return
        self._finished = gevent.event.Event()
        resume = self._resume = gevent.event.Event()
        recv = self._sock.recv
        try:
            while self.state < ENDED:
                inbox = self._inbox
                if inbox is not None and (
                    len(inbox) >= INBOX_HIGH or self._inbox_bytes >= INBOX_BYTES_HIGH
                ):
                    # As the plain socket's watcher stops: do not read while the handler is
                    # behind, so that a client cannot queue unbounded work (TCP slows it).
                    resume.clear()
                    resume.wait()
                    continue
                data = recv(READ_SIZE)
                if not data:
                    break
                if self.tally is not None:
                    self.tally.bytes_in += len(data)
                self._feed(data)
        except (OSError, ValueError):  # ValueError: _abort shut the SSLSocket down under us
            pass
        self._end()
        self._finished.wait()

    def _on_readable(self) -> None:
        """libev callback (in the hub: must never block): read what arrived and parse it."""
        try:
            data = self._raw.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            if data:
                tally = self.tally
                if tally is not None:
                    tally.bytes_in += len(data)
                self._feed(data)
            else:
                self._end()
        except Exception:  # a bug here must not take the event loop with it
            log.exception("error reading from %r", self)
            self._end()

    def _end(self) -> None:
        """The peer is gone or the closing handshake is over: stop reading, then clean up."""
        if self.state >= ENDED:
            return
        self.state = ENDED
        if self._resume is not None:
            self._resume.set()  # a paused TLS reader must see the end
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self._worker is None:
            self._worker = gevent.spawn(self._work)

    def _work(self) -> None:
        """Handle queued messages in order; after the end, run `on_end` once and release."""
        inbox = self._inbox  # None: nothing queued (inline handling, or the end)
        try:
            while inbox:
                text = inbox.popleft()
                self._inbox_bytes -= len(text)
                if len(inbox) <= INBOX_LOW and self._inbox_bytes <= INBOX_BYTES_LOW:
                    # Resume reading: we have caught up.
                    watcher = self._watcher
                    if watcher is not None and not watcher.active:
                        watcher.start(self._on_readable)
                    elif self._resume is not None:
                        self._resume.set()
                try:
                    self.on_message(text)
                except Exception:
                    log.exception("error handling a message on %r", self)
        finally:
            self._worker = None
        if self.state >= ENDED:
            self._finish()
        elif inbox:  # a message arrived while the last one was being finished
            self._worker = gevent.spawn(self._work)
        else:
            self._inbox = None  # drained: an idle connection keeps no deque (760 bytes)

    def _finish(self) -> None:
        try:
            self.on_end()
        except Exception:
            log.exception("error cleaning up %r", self)
        finally:
            self.on_end = _nothing
            self.on_message = _ignore
            self.on_message_now = None
            if self._outbox is None:
                self._release()
            elif self._closer is None:
                # The writer releases the socket once the backlog (our close frame) is out;
                # a client that never reads it is dropped after CLOSE_WAIT.
                self._closer = gevent.spawn_later(CLOSE_WAIT, self._abort)

    def _release(self) -> None:
        """Close our socket (a TLS socket is closed by pywsgi when the reader returns)."""
        if self.state is RELEASED:
            return
        self.state = RELEASED
        if self._closer is not None:
            if self._closer is not gevent.getcurrent():
                self._closer.kill(block=False)
            self._closer = None
        if self._detached:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._finished is not None:
            self._finished.set()

    # --- writing ------------------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write one pre-built frame without blocking; False if the connection is closing."""
        if self.state:  # anything but OPEN
            return False
        return self._write(data)

    def send_event(self, payload: bytes) -> bool:
        """Frame and send one JSON payload to this connection only."""
        data = text_frame(payload)
        if self.tally is not None:
            self.tally.bytes_out += len(data)
        return self.send(data)

    def _write(self, data: bytes) -> bool:
        outbox = self._outbox
        if outbox is not None:
            if self._outbox_bytes + len(data) > self._max_outbox:
                self._overflow()
                return False
            outbox.append(data)
            self._outbox_bytes += len(data)
            return True
        if self.state is RELEASED:
            return False
        sent = 0
        if self._raw_send is not None:
            try:
                sent = self._raw_send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._abort()
                return False
            if sent == len(data):
                return True
        # The unsent tail of this frame goes to the writer directly, never into the outbox:
        # the outbox holds whole frames only, so that dropping it on overflow cannot cut a
        # frame in half (the client would read our close frame as the rest of its payload).
        self._outbox = deque()
        self._outbox_bytes = 0
        gevent.spawn(self._drain, data[sent:])
        return True

    def _drain(self, rest: bytes) -> None:
        """Finish the partly written frame `rest`, then the backlog, with cooperative blocking;
        the only writer while one exists. `_outbox_bytes` counts what still waits."""
        outbox = self._outbox
        try:
            self._sock.sendall(rest)
            while outbox:
                data = outbox.popleft()
                self._outbox_bytes -= len(data)
                self._sock.sendall(data)
        except OSError:
            self._abort()
        finally:
            if self._outbox is outbox:
                self._outbox = None
                self._outbox_bytes = 0
            if self.state >= ENDED and self._worker is None:
                self._release()

    def _overflow(self) -> None:
        log.warning("closing %r: outbox over %d bytes (slow consumer)", self, self._max_outbox)
        if self._on_overflow is not None:
            self._on_overflow()
        if self._outbox is not None:
            self._outbox.clear()
            self._outbox_bytes = 0
        self.close(protocol.OVER_CAPACITY, "Client is not reading fast enough")

    def close(self, code: int, reason: str = "", error: bool = False) -> None:
        """Start the closing handshake with `code`; with `error`, send a pusher:error first."""
        if self.state is not OPEN:
            return
        if error:
            self._write(text_frame(protocol.encode_error(code, reason)))
        self.state = CLOSING
        self.close_code = code
        self._write(close_frame(code, reason))
        # The connection ends when the peer answers; if it never does, drop the TCP connection.
        self._closer = gevent.spawn_later(CLOSE_WAIT, self._abort)

    def _abort(self) -> None:
        """Drop the TCP connection now (a stuck writer fails); the connection then ends."""
        if self.state is RELEASED:
            return
        if self.state is OPEN:
            self.state = CLOSING
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._detached:
            self._end()  # a TLS reader sees EOF and ends it itself

    # --- reading ------------------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> None:
        """Start the closing handshake for a client error; reading goes on until it ends.

        Dropping the connection at once would reset it while the client's bytes are still
        unread, and a reset destroys our close frame in flight: the client would never learn
        the code. So whatever the client still sends is read and dropped until its close
        frame arrives, or CLOSE_WAIT passes.
        """
        log.info("closing %r: %s", self, reason)
        self.close(code, reason)

    def _feed(self, data: bytes) -> None:
        """Parse every complete frame in what has arrived; keep the incomplete rest.

        A frame that arrives in pieces is accumulated in place and parsed once complete: the
        work per read is proportional to what was read, however the client cuts its bytes.

        Once the connection is closing, every frame but the peer's close is read and dropped,
        and a payload being dropped is never buffered.
        """
        if self.state >= ENDED:
            return
        if self._skip_left:
            n = min(self._skip_left, len(data))
            self._skip_left -= n
            data = data[n:]
            if not data:
                return
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        rbuf = self._rbuf
        if rbuf is not None:
            rbuf += data
            if len(rbuf) < self._need:
                return  # the frame is still incomplete: no need to look at it again yet
            buf: bytes | bytearray = rbuf
        else:
            buf = data
        pos, end = 0, len(buf)
        need = 0  # bytes the frame at `pos` needs before parsing it again is worth it
        while self.state < ENDED:
            header = parse_header(buf, pos, end)
            if header is None:
                break
            b0, opcode, masked, length, head = header
            if self.state is OPEN:
                error = header_error(
                    b0,
                    masked,
                    opcode,
                    length,
                    self._started,
                    self._size,
                    self._max_frame,
                    len(self._parts),
                )
                if error is not None:
                    self._fail(*error)
            if self.state is not OPEN and (opcode != OP_CLOSE or length > 125):
                available = end - pos - head
                if available >= length:
                    pos += head + length
                    continue
                self._skip_left = length - available
                pos = end
                break
            if end - pos - head < length:
                need = head + length
                break
            start = pos + head
            payload = buf[start : start + length]
            if masked and length:
                payload = unmask(payload, buf[start - 4 : start])
            pos = start + length
            self._frame(b0, opcode, payload)
        # Keep the incomplete rest at the start of a bytearray that later reads extend.
        if pos >= end:
            self._rbuf = None
        elif buf is rbuf:
            del rbuf[:pos]
        else:
            self._rbuf = bytearray(memoryview(buf)[pos:])
        self._need = need

    def _frame(self, b0: int, opcode: int, payload: bytes) -> None:
        """Act on one complete frame."""
        if opcode == OP_PING:
            self._write(frame(payload, OP_PONG))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            self._peer_closed(payload)
            return
        if self._started is None:
            self._started = opcode
        self._parts.append(payload)
        self._size += len(payload)
        if not b0 & FIN:
            return
        message_opcode, parts = self._started, self._parts
        self._started, self._parts, self._size = None, [], 0
        if message_opcode == OP_BINARY:
            self._fail(protocol.WS_UNSUPPORTED_DATA, "Binary frames are not supported")
            return
        try:
            text = (parts[0] if len(parts) == 1 else b"".join(parts)).decode("utf-8")
        except UnicodeDecodeError:
            self._fail(protocol.WS_INVALID_PAYLOAD, "Invalid UTF-8")
            return
        if self._worker is None:  # nothing queued before it: order is kept
            # Handlers that never block (one process, no Redis; with Redis, client events and
            # pings) run right here, even in the watcher callback: no greenlet to create and
            # switch to for every message.
            try:
                if self._inline:
                    self.on_message(text)
                    return
                now = self.on_message_now
                if now is not None and now(text):
                    return
            except Exception:
                log.exception("error handling a message on %r", self)
                return
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(text)
        self._inbox_bytes += len(text)
        if self._worker is None:
            self._worker = gevent.spawn(self._work)
        elif self._watcher is not None and (
            len(inbox) >= INBOX_HIGH or self._inbox_bytes >= INBOX_BYTES_HIGH
        ):
            self._watcher.stop()  # resumed by the worker once it has caught up

    def _peer_closed(self, payload: bytes) -> None:
        """Answer the peer's close frame (echoing its code) unless we started the close."""
        if self.state is OPEN:
            code = peer_close_code(payload)
            self.state = CLOSING
            self.close_code = code
            self._write(close_frame(code))
        self._end()


def _ignore(_text: str) -> None:
    pass


def _nothing() -> None:
    pass
